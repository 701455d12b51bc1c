//! Serving a router on a listener with bounds: a connection limit, a header-read timeout, and
//! room kept for the requests that matter while the port is flooded.
//!
//! axum's own `serve` accepts without limit and waits forever for a request's headers, so
//! 20,000 half-sent requests used up the open-file limit before any of them was authorised,
//! and `/health` and the control socket hung. Here:
//! - Every connection must send a whole request head within `header_read_timeout` (hyper's
//!   timer; it covers a keep-alive connection's wait for its next request too).
//! - At most `max_connections` are open. At the limit, accepting one more closes the oldest
//!   connection that has not yet sent a whole request head (a half-open one), so a client that
//!   sends a real request (`/health`, a send) gets in at once while the flood churns. When every
//!   open connection is serving a request, the newcomer is closed instead.
//! - [`raise_open_file_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one at start, and
//!   [`default_max_connections`] keeps [`FD_RESERVE`] descriptors for everything else (the
//!   control socket, libraries, the journal, plugins' own sockets).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, serve::Listener};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

/// File descriptors kept out of the public port's connection limit.
pub const FD_RESERVE: u64 = 256;

/// The default header-read timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket's connection limit: it serves an operator and scripts, not the world.
pub const CONTROL_MAX_CONNECTIONS: usize = 64;

/// How a listener is served.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time allowed for a whole request head.
    pub header_read_timeout: Duration,
}

/// Raises the soft open-file limit to the hard one; returns the soft limit in force after.
pub fn raise_open_file_limit() -> u64 {
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
pub fn default_max_connections(nofile: u64) -> usize {
    nofile.saturating_sub(FD_RESERVE).clamp(16, 1 << 20) as usize
}

/// One accepted connection, as the limiter sees it.
struct Conn {
    /// A whole request head arrived: no longer a candidate for eviction.
    started: AtomicBool,
    /// Told to close (evicted).
    evict: Notify,
}

/// The open connections and, oldest first, those that may be evicted.
struct Slots {
    open: AtomicUsize,
    fresh: Mutex<VecDeque<std::sync::Weak<Conn>>>,
}

impl Slots {
    /// Evicts the oldest connection that has not sent a request head; `false` if none.
    fn evict_oldest_fresh(&self) -> bool {
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(weak) = fresh.pop_front() {
            if let Some(conn) = weak.upgrade()
                && !conn.started.load(Ordering::Acquire)
            {
                conn.evict.notify_one();
                return true;
            }
        }
        false
    }

    fn push(&self, conn: &Arc<Conn>, limit: usize) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() > 2 * limit {
            fresh.retain(|w| {
                w.upgrade()
                    .is_some_and(|c| !c.started.load(Ordering::Acquire))
            });
        }
        fresh.push_back(Arc::downgrade(conn));
    }
}

/// Counts a connection open until dropped.
struct Open(Arc<Slots>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, lets requests
/// in flight finish, and returns once every connection is closed.
pub async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots {
        open: AtomicUsize::new(0),
        fresh: Mutex::new(VecDeque::new()),
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
        if open > limits.max_connections && !slots.evict_oldest_fresh() {
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
            started: AtomicBool::new(false),
            evict: Notify::new(),
        });
        slots.push(&conn, limits.max_connections);
        let service = {
            let conn = Arc::clone(&conn);
            let app = app.clone();
            hyper::service::service_fn(move |request| {
                conn.started.store(true, Ordering::Release);
                app.clone().oneshot(request)
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
