//! The HTTP server: connections accepted up to a cap, and closed when they hold it without
//! sending a request in time.
//!
//! hyper reads and writes HTTP/1.1; this module decides which connections it gets and how
//! long they may keep a socket:
//! - **connection cap**: at most [`HttpLimits::max_connections`] open at once; one more is
//!   answered `503` with `Retry-After: 1` and closed at once, and counted;
//! - **header read timeout**: a request's header must be complete within
//!   [`HttpLimits::header_read_timeout`] of its first byte (of the connection's opening, for
//!   its first request): a client that sends half a header and waits is cut off;
//! - **idle keep-alive timeout**: a connection with no request for
//!   [`HttpLimits::keep_alive_timeout`] is closed;
//! - **body read timeout**: enforced where a body is read (`POST /v1/check`, `408`).
//!
//! (hyper's own header timeout, on by default at 30 s, starts when it waits for a request,
//! so it would close idle keep-alive connections at the header timeout: it is turned off,
//! and the two are told apart here by watching when a request's first byte arrives.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

/// What a client may hold of the server, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest time from a request's first byte (a connection's opening, for its first
    /// request) until its header is complete.
    pub header_read_timeout: Duration,
    /// Longest time a kept-alive connection may wait without a request.
    pub keep_alive_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Why a connection was closed by the server, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
        }
    }
}

/// What a connection refused at the cap gets.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-length: 0\r\nconnection: close\r\n\r\n";

/// Refused connections being answered at once, at most: past the cap, a flood must not
/// hold more descriptors than this while its refusals are delivered.
const REFUSING: usize = 256;

/// How long a refused connection may take to read its 503 and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting, lets the requests in flight finish, and returns.
///
/// # Errors
/// Never, today: a failed `accept` (out of file descriptors, say) is logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors and the like: let some close first.
                        tracing::error!(error = %e, "cannot accept connections");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics::counter!("ratelimit_http_connections_refused_total").increment(1);
            if let Ok(slot) = Arc::clone(&refusing).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = connection(stream, peer, router.clone(), limits, &graceful);
        tokio::spawn(async move {
            let open = metrics::gauge!("ratelimit_http_connections_open");
            open.increment(1.0);
            connection.await;
            open.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the cap with `503` and closes it cleanly: what the client sent
/// is read and dropped until it closes too (closing with unread bytes would reset the
/// connection and lose the answer), for at most [`REFUSAL_LINGER`].
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answered = async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answered).await;
}

/// One connection, served until the client closes it, a limit closes it, or shutdown.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let requests = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let busy = requests.begin();
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await;
            drop(busy);
            response
        }
    });
    // hyper's own header timeout would also cut idle keep-alive connections (see above).
    let served = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    let served = graceful.watch(served);
    async move {
        let mut served = std::pin::pin!(served);
        let closed = tokio::select! {
            result = &mut served => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            closed = activity.expired(limits) => closed,
        };
        // Counted before the socket closes, so whoever sees it closed sees it counted.
        metrics::counter!("ratelimit_http_connections_closed_total", "reason" => closed.as_str())
            .increment(1);
        tracing::debug!(reason = closed.as_str(), "connection closed by the server");
        // The connection, pinned in this task, is dropped as it ends, which closes its
        // socket: no request is being handled, and the last answer went out a timeout ago.
    }
}

/// Errors of one connection that `accept` reports, which say nothing of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// When a connection last did what, in milliseconds since it opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests being served now.
    busy: AtomicU32,
    /// Requests served to the end.
    served: AtomicU64,
    /// Since when nothing has been served (the opening, or the end of the last request).
    quiet_since: AtomicU64,
    /// When the first byte after `quiet_since` arrived; [`NOTHING`] if none has.
    reading_since: AtomicU64,
    /// Wakes the watch when a request starts arriving on a quiet connection: its header
    /// deadline is then nearer than the idle one the watch sleeps towards.
    started_reading: Notify,
}

const NOTHING: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            busy: AtomicU32::new(0),
            served: AtomicU64::new(0),
            quiet_since: AtomicU64::new(0),
            reading_since: AtomicU64::new(NOTHING),
            started_reading: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NOTHING - 1)
    }

    /// Bytes arrived: if the connection was quiet, a request has begun.
    fn read(&self) {
        if self.busy.load(Ordering::Acquire) == 0
            && self.reading_since.load(Ordering::Relaxed) == NOTHING
            && self
                .reading_since
                .compare_exchange(NOTHING, self.now(), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.started_reading.notify_one();
        }
    }

    /// A request's header is complete and the request is being served until the guard goes.
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Resolves when the connection has broken a limit, and says which.
    async fn expired(&self, limits: HttpLimits) -> Closed {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NOTHING - 1);
        let (header, idle) = (
            ms(limits.header_read_timeout),
            ms(limits.keep_alive_timeout),
        );
        loop {
            let deadline = if self.busy.load(Ordering::Acquire) > 0 {
                None
            } else if self.served.load(Ordering::Acquire) == 0 {
                // The first request: its header is due from the opening.
                Some((
                    self.quiet_since.load(Ordering::Acquire) + header,
                    Closed::HeaderTimeout,
                ))
            } else {
                match self.reading_since.load(Ordering::Acquire) {
                    NOTHING => Some((
                        self.quiet_since
                            .load(Ordering::Acquire)
                            .saturating_add(idle),
                        Closed::IdleTimeout,
                    )),
                    since => Some((since.saturating_add(header), Closed::HeaderTimeout)),
                }
            };
            let wait = match deadline {
                Some((at, closed)) => match at.checked_sub(self.now()) {
                    None | Some(0) => return closed,
                    Some(left) => left,
                },
                // Serving: look again later (the request's own deadlines bound it).
                None => header.min(idle),
            };
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                () = self.started_reading.notified() => {}
            }
        }
    }
}

/// A request being served; when dropped, the connection is quiet again (unless another is).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .quiet_since
            .store(activity.now(), Ordering::Release);
        activity.reading_since.store(NOTHING, Ordering::Release);
        activity.served.fetch_add(1, Ordering::AcqRel);
        activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
