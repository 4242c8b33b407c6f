//! The HTTP server loop: hyper (HTTP/1.1 and HTTP/2, detected per connection) serving the poem
//! endpoint, with the protections poem's own server lacks:
//! - a deadline from accept to the first request (covers silent sockets, a lone byte, a partial
//!   or complete HTTP/2 preface and the whole HTTP/2 handshake), and the same deadline for a
//!   connection idle between requests, HTTP/2 pings or not;
//! - hyper's header-read deadline for slow headers (slowloris);
//! - a cap on open connections, so a flood of sockets cannot take every file descriptor;
//! - a graceful drain on shutdown.
//!
//! The protocol is told by peeking at the first bytes rather than reading them: a detector that
//! reads (hyper-util's auto builder) hands them back as a prefix, hyper's first read of the
//! socket is then short and its adaptive read buffer doubles to 16 KiB for the connection's
//! life, which is most of what an idle connection or event stream costs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use poem::{Endpoint, EndpointExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry::Metrics;

/// How long in-flight requests get to finish once shutdown closes the listener.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a connection told to close gracefully (idle, or shutting down with nothing in
/// flight) gets before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline for the first request's headers after accept, for each request's headers, and
    /// for idleness between requests.
    pub header_timeout: Duration,
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
}

/// Raises the soft limit on open files to the hard limit: the connection cap, not the
/// distribution's default soft limit (often 1024), should be what bounds connections.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}

/// Serves `routes` on `listener` until `signal` resolves, then stops accepting and drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: impl Endpoint + 'static,
    limits: Limits,
    metrics: Arc<Metrics>,
    signal: impl Future<Output = ()>,
) {
    let endpoint = Arc::new(routes.map_to_response().boxed());
    let protocols = Arc::new(Protocols::new(limits));
    let local = listener.local_addr().ok();
    let open = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut last_cap_log: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    let mut signal = std::pin::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            // Closed at once: left in the backlog, it would only wait for a slot a flood holds.
            drop(stream);
            metrics.connection_refused();
            refused_since_log += 1;
            if last_cap_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused = refused_since_log,
                    "connection limit reached (GATEWAY_MAX_CONNECTIONS); closing new connections"
                );
                last_cap_log = Some(Instant::now());
                refused_since_log = 0;
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let slot = Slot::take(&open);
        tracker.spawn(connection(
            stream,
            peer,
            local,
            endpoint.clone(),
            protocols.clone(),
            limits,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::warn!("in-flight requests still open after 10 s; closing them");
    }
}

/// The two protocols' connection settings, shared by every connection.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(128 * 1024)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // Pings find dead peers; idleness is ended by the connection's own deadline.
        h2.timer(TokioTimer::new()).keep_alive_interval(Some(limits.header_timeout * 3));
        Self { h1, h2 }
    }
}

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Tells the protocol from the first bytes without consuming them; `None` when the peer closes
/// first. Returns as soon as the bytes differ from the HTTP/2 preface, so an HTTP/1 request is
/// not held back.
async fn detect(stream: &TcpStream) -> std::io::Result<Option<Protocol>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        // Only a prefix of the preface so far: peek answers at once while any byte is buffered,
        // so wait a little instead of spinning (the caller's deadline bounds the whole wait).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One open connection's place under the cap, given back when the connection ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection is doing: requests in flight, and when it last started or finished one
/// (milliseconds since the connection was accepted).
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// Signalled when a request ends: the connection task re-arms its idle deadline.
    ended: tokio::sync::Notify,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When the connection counts as idle for `limit`, if nothing happens before.
    fn idle_at(&self, limit: Duration) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit
    }
}

/// Counts one request in flight while it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // The receiver is the connection task's select loop.
        self.0.ended.notify_one();
    }
}

type Routes = Arc<poem::endpoint::BoxEndpoint<'static, poem::Response>>;

/// Serves one connection until it closes, is idle past the limit, or shutdown drains it. A macro
/// rather than a generic function: the two protocols' connection types share no trait with
/// `graceful_shutdown`, and a generic async fn over them defeats rustc's `Send` inference.
macro_rules! drive {
    ($conn:expr, $activity:expr, $limits:expr, $shutdown:expr) => {{
        let activity = $activity;
        let limits: Limits = $limits;
        let shutdown: &CancellationToken = $shutdown;
        let mut conn = std::pin::pin!($conn);
        // Once set, the connection was asked to close and is dropped at this instant if it has not.
        let mut drop_at: Option<Instant> = None;
        loop {
            // A request in flight is bounded by the request timeout, not by this deadline: look
            // again when it ends (or after a while).
            let idle_at = if activity.in_flight.load(Ordering::Relaxed) > 0 {
                Instant::now() + limits.header_timeout
            } else {
                activity.idle_at(limits.header_timeout)
            };
            tokio::select! {
                // Errors here are clients going away or timing out; nothing to report.
                _ = conn.as_mut() => break,
                _ = activity.ended.notified() => {}
                _ = tokio::time::sleep_until(idle_at), if drop_at.is_none() => {
                    let idle = activity.in_flight.load(Ordering::Relaxed) == 0
                        && activity.idle_at(limits.header_timeout) <= Instant::now();
                    if idle {
                        // Never sent a request, or none for the whole limit: HTTP/1 closes at
                        // once, HTTP/2 says GOAWAY.
                        conn.as_mut().graceful_shutdown();
                        drop_at = Some(Instant::now() + CLOSE_GRACE);
                    }
                }
                _ = shutdown.cancelled(), if drop_at.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    // In-flight requests get the server's drain time; an idle connection closes now.
                    drop_at = Some(Instant::now() + DRAIN);
                }
                _ = tokio::time::sleep_until(drop_at.unwrap_or(idle_at)), if drop_at.is_some() => {
                    if activity.in_flight.load(Ordering::Relaxed) == 0 {
                        break;
                    }
                    // A request is still being answered: let it finish (the request timeout
                    // bounds it).
                    drop_at = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }};
}

// One argument per thing a connection needs; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    endpoint: Routes,
    protocols: Arc<Protocols>,
    limits: Limits,
    shutdown: CancellationToken,
    _slot: Slot,
) {
    // Born at accept: the first-request deadline covers the wait for the first bytes too.
    let activity = Arc::new(Activity {
        born: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
        ended: tokio::sync::Notify::new(),
    });
    let protocol = tokio::select! {
        detected = tokio::time::timeout(limits.header_timeout, detect(&stream)) => match detected {
            Ok(Ok(Some(p))) => p,
            // Silent past the deadline, closed, or a socket error: nothing was asked.
            _ => return,
        },
        _ = shutdown.cancelled() => return,
    };
    let local_addr =
        poem::web::LocalAddr(local.map(poem::Addr::SocketAddr).unwrap_or(poem::Addr::Custom("tcp", "".into())));
    let remote_addr = poem::web::RemoteAddr(poem::Addr::SocketAddr(peer));
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // Counted from the moment hyper hands the request over until its answer is built.
        let guard = InFlight::start(&requests);
        let endpoint = endpoint.clone();
        let req = poem::Request::from((req, local_addr.clone(), remote_addr.clone(), poem::http::uri::Scheme::HTTP));
        // Boxed: hyper's HTTP/1 dispatcher allocates the slot for the request being answered once
        // per connection, sized for this future, and keeps it for the connection's life; boxed,
        // an idle connection or an event stream keeps a pointer (the whole state was 2 480 bytes
        // in a debug build) and the state lives only while a request is being answered.
        Box::pin(async move {
            let resp = hyper::Response::from(endpoint.get_response(req).await);
            // The request stays in flight until its body is sent: a streamed answer (SSE) is a
            // request being answered, not an idle connection.
            Ok::<_, std::convert::Infallible>(resp.map(|body| GuardedBody { body, _guard: guard }))
        })
    });
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http1 => {
            drive!(protocols.h1.serve_connection(io, service), &activity, limits, &shutdown)
        }
        // Boxed: inline, HTTP/2's larger connection state would size every connection's task.
        Protocol::Http2 => {
            Box::pin(async { drive!(protocols.h2.serve_connection(io, service), &activity, limits, &shutdown) }).await
        }
    }
}

/// A response body that keeps its request counted in flight until hyper drops it.
struct GuardedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task is allocated whole when it is spawned, and glibc hands out memory that
    /// earlier allocations already made resident, so every byte of it costs RSS for as long as the
    /// connection (an event stream, an idle keep-alive client) lives. Release builds are smaller.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let limits = Limits { header_timeout: Duration::from_secs(5), max_connections: 10 };
        let endpoint: Routes = Arc::new(poem::Route::new().map_to_response().boxed());
        let open = Arc::new(AtomicUsize::new(0));
        let task = connection(
            stream,
            peer,
            Some(addr),
            endpoint,
            Arc::new(Protocols::new(limits)),
            limits,
            CancellationToken::new(),
            Slot::take(&open),
        );
        let size = std::mem::size_of_val(&task);
        drop(task);
        drop(client);
        // 1 520 bytes in a debug build; 2 368 with HTTP/2's connection state inline.
        assert!(size <= 2048, "a connection's task holds {size} bytes");
    }
}
