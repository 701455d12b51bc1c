//! Serving a router on a listener with bounds: a connection limit, header and body read
//! timeouts, and room kept for the requests that matter while the port is flooded.
//!
//! axum's own `serve` accepts without limit and waits forever for a request's headers, so
//! 20,000 half-sent requests used up the open-file limit before any of them was authorised,
//! and `/health` and the control socket hung. Here:
//! - Every connection must send a whole request head within `header_read_timeout` (hyper's
//!   timer; it covers a keep-alive connection's wait for its next request too, so an idle
//!   keep-alive connection is closed after it).
//! - A request's body is read here, before the router sees it: whole within
//!   `body_read_timeout` (default 30 s), at no less than [`MIN_BODY_RATE`] bytes a second once
//!   [`BODY_RATE_GRACE`] passed, and at most [`MAX_BODY`] bytes. Otherwise the answer is 408 or
//!   413 (the JSON error) and the connection closes.
//! - A connection is *busy* from a whole request body to the end of its response (an SSE stream
//!   is busy while it lasts), and *idle* otherwise: waiting for a request head (half-open, or
//!   keep-alive between requests) or trickling a body. At most `max_connections` are open. At
//!   the limit, accepting one more closes the connection idle the longest, so a client that
//!   sends a real request (`/health`, a send) gets in at once while a flood of half-open,
//!   idle keep-alive or slow-body connections churns. When every open connection is busy, the
//!   newcomer is closed instead.
//! - [`raise_open_file_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one at start, and
//!   [`default_max_connections`] keeps [`FD_RESERVE`] descriptors for everything else (the
//!   control socket, libraries, the journal, plugins' own sockets).

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::Request, http::Response, serve::Listener};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

/// File descriptors kept out of the public port's connection limit.
pub(crate) const FD_RESERVE: u64 = 256;

/// The default header-read timeout.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket's connection limit: it serves an operator and scripts, not the world.
pub(crate) const CONTROL_MAX_CONNECTIONS: usize = 64;

/// How a listener is served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time allowed for a whole request head.
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request body.
    pub body_read_timeout: Duration,
}

/// Raises the soft open-file limit to the hard one; returns the soft limit in force after.
pub(crate) fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return u64::MAX; // unlimited
    };
    let Some(hard) = hard else {
        return soft;
    };
    if hard > soft {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    soft
}

/// The public port's default connection limit for an open-file limit of `nofile`.
pub(crate) fn default_max_connections(nofile: u64) -> usize {
    nofile.saturating_sub(FD_RESERVE).clamp(16, 1 << 20) as usize
}

/// The most bytes of a request body read (each router bounds its own routes further).
pub(crate) const MAX_BODY: usize = 1 << 20;

/// The default time a whole request body has.
pub(crate) const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The slowest a request body may arrive, on average since its head, once
/// [`BODY_RATE_GRACE`] has passed.
pub(crate) const MIN_BODY_RATE: u64 = 1024;

/// How long a body may come slower than [`MIN_BODY_RATE`] (a short body sent late).
pub(crate) const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// One accepted connection, as the limiter sees it.
struct Conn {
    /// Requests of this connection being served: from a whole body to the response's end.
    busy: AtomicUsize,
    /// Bumped each time it turns idle: only its latest entry in the idle queue counts.
    idle_seq: AtomicUsize,
    /// Told to close (evicted).
    evict: Notify,
}

impl Conn {
    /// Whether the idle-queue entry stamped `seq` is this connection's latest, and it is idle.
    fn idle_as_of(&self, seq: usize) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && self.idle_seq.load(Ordering::Acquire) == seq
    }
}

/// The open connections and, idle the longest first, those that may be evicted.
struct Slots {
    open: AtomicUsize,
    limit: usize,
    /// Connections as they turned idle, with the stamp of that turn; an entry whose
    /// connection turned busy (or idle again, or closed) since is stale and skipped.
    idle: Mutex<VecDeque<(std::sync::Weak<Conn>, usize)>>,
}

impl Slots {
    /// Evicts the connection idle the longest; `false` if every one is busy.
    fn evict_oldest_idle(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((weak, seq)) = idle.pop_front() {
            if let Some(conn) = weak.upgrade()
                && conn.idle_as_of(seq)
            {
                conn.evict.notify_one();
                return true;
            }
        }
        false
    }

    /// Queues `conn` as idle from now.
    fn idle(&self, conn: &Arc<Conn>) {
        let seq = conn.idle_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Stale entries pile up as keep-alive connections serve request after request; past
        // twice the limit, drop them (what stays is one entry per idle connection at most).
        if idle.len() > 2 * self.limit.max(64) {
            idle.retain(|(w, seq)| w.upgrade().is_some_and(|c| c.idle_as_of(*seq)));
        }
        idle.push_back((Arc::downgrade(conn), seq));
    }
}

/// Counts a connection open until dropped.
struct Open(Arc<Slots>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request being served: its connection is busy until this drops (with the response body).
struct Busy {
    conn: Arc<Conn>,
    slots: Arc<Slots>,
}

impl Busy {
    fn start(conn: &Arc<Conn>, slots: &Arc<Slots>) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            conn: Arc::clone(conn),
            slots: Arc::clone(slots),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.conn.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slots.idle(&self.conn);
        }
    }
}

/// A response body that keeps its connection busy until it is written or dropped.
struct Guarded {
    inner: axum::body::Body,
    _busy: Option<Busy>,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body was not read whole.
fn body_refused(status: axum::http::StatusCode, message: String) -> Response<Guarded> {
    let mut response = axum::response::IntoResponse::into_response((
        status,
        axum::Json(
            serde_json::json!({ "error": message, "retryable": status == axum::http::StatusCode::REQUEST_TIMEOUT }),
        ),
    ));
    // The rest of the body is not read: the connection cannot carry another request.
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response.map(|inner| Guarded { inner, _busy: None })
}

/// Reads a whole request body within the limits.
async fn read_body(
    mut body: hyper::body::Incoming,
    limits: &Limits,
) -> Result<bytes::Bytes, Response<Guarded>> {
    use axum::http::StatusCode;
    use http_body_util::BodyExt as _;
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(bytes::Bytes::new());
    }
    let started = tokio::time::Instant::now();
    let deadline = started + limits.body_read_timeout;
    // A body of one frame (the usual case) is handed on as it is, without a copy; more frames
    // are gathered in one buffer.
    let mut first: Option<bytes::Bytes> = None;
    let mut gathered = bytes::BytesMut::new();
    let mut read = 0usize;
    loop {
        // A frame that is already there (a small body arrives with its head) needs no timer.
        let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(frame) => Ok(frame),
            None => {
                let check = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
                tokio::time::timeout_at(check, body.frame()).await
            }
        };
        match frame {
            Ok(None) => return Ok(first.unwrap_or_else(|| gathered.freeze())),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if read + data.len() > MAX_BODY {
                        return Err(body_refused(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("the request body is over {MAX_BODY} bytes"),
                        ));
                    }
                    read += data.len();
                    if first.is_none() && gathered.is_empty() {
                        first = Some(data);
                    } else {
                        if let Some(first) = first.take() {
                            gathered.extend_from_slice(&first);
                        }
                        gathered.extend_from_slice(&data);
                    }
                }
            }
            Ok(Some(Err(e))) => {
                return Err(body_refused(
                    StatusCode::BAD_REQUEST,
                    format!("the request body broke off: {e}"),
                ));
            }
            Err(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(body_refused(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    limits.body_read_timeout
                ),
            ));
        }
        let elapsed = now - started;
        if elapsed > BODY_RATE_GRACE && (read as f64) < MIN_BODY_RATE as f64 * elapsed.as_secs_f64()
        {
            return Err(body_refused(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body came slower than {MIN_BODY_RATE} bytes a second"),
            ));
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, lets requests
/// in flight finish, and returns once every connection is closed.
pub(crate) async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots {
        open: AtomicUsize::new(0),
        limit: limits.max_connections,
        idle: Mutex::new(VecDeque::new()),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut refused_logged = false;
    loop {
        let io = tokio::select! {
            (io, _addr) = listener.accept() => io,
            _ = shutdown.wait_for(|down| *down) => break,
        };
        let open = slots.open.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = Open(Arc::clone(&slots));
        if open > limits.max_connections && !slots.evict_oldest_idle() {
            // Every connection is serving a request: this one waits its turn elsewhere.
            if !refused_logged {
                tracing::warn!(
                    limit = limits.max_connections,
                    "connection limit reached with every connection busy; closing new ones"
                );
                refused_logged = true;
            }
            continue;
        }
        refused_logged = false;
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_seq: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        slots.idle(&conn);
        let service = {
            let conn = Arc::clone(&conn);
            let slots = Arc::clone(&slots);
            let app = app.clone();
            hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let conn = Arc::clone(&conn);
                let slots = Arc::clone(&slots);
                let app = app.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = match read_body(body, &limits).await {
                        Ok(body) => body,
                        Err(refused) => return Ok::<_, Infallible>(refused),
                    };
                    let busy = Busy::start(&conn, &slots);
                    let request = Request::from_parts(parts, axum::body::Body::from(body));
                    let Ok(response) = app.oneshot(request).await;
                    Ok(response.map(|inner| Guarded {
                        inner,
                        _busy: Some(busy),
                    }))
                }
            })
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            let _open = guard;
            tokio::select! {
                _ = connection => {}
                _ = conn.evict.notified() => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
