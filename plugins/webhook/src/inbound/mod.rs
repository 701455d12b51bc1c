//! The inbound listener: signed `POST /hooks/<chat>` requests, served concurrently within bounds.
//!
//! An acceptor thread hands each connection a thread of its own, one request per connection.
//! Whatever a client sends is bounded, as on the gateway's own port:
//! - a request head (request line and headers) of at most [`MAX_HEAD`] bytes, read whole
//!   within [`HEAD_TIMEOUT`] (a deadline for the whole head, not per read: a client trickling
//!   a header every few seconds is cut off); more is 431, a late head is dropped;
//! - a body of at most [`BODY_LIMIT`] bytes, read whole within [`BODY_TIMEOUT`] of the accept;
//! - at most [`MAX_CONNECTIONS`] connections at once. At the limit, a new connection closes the
//!   one that has been reading its request the longest (half-open, trickling); when every
//!   connection is past reading (its request is being delivered), the newcomer gets 503.
//!
//! Signatures (scheme `v1`): the sender puts the Unix time in `X-Hermes-Timestamp` and
//! `X-Hermes-Signature: v1=<hex HMAC-SHA256>` of `<timestamp>\n<METHOD>\n<path>\n<body>` under
//! the shared secret. A request is delivered only if the signature matches, the timestamp is
//! within [`signature::WINDOW`] of the listener's clock, and that signature was not seen before within the
//! window (a replay). So a captured request cannot be sent again, later, or to another chat.
//! The body-only `sha256=` signature of earlier versions is refused, saying so.
//!
//! Every thread is joined at `stop`: the acceptor stops, every connection is shut down, and
//! each handler ends at its next read.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hermes_plugin_api::Host;

mod signature;

use signature::Signatures;

/// Request bodies larger than this are refused.
const BODY_LIMIT: usize = 64 * 1024;

/// The most bytes of a request head (request line and headers).
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// The time a client has for its whole request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The time a client has for its whole request, body included, from the accept.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// A connection, as the acceptor sees it.
struct Conn {
    id: u64,
    /// A clone of the handler's socket, to shut it down (eviction, stop).
    stream: TcpStream,
    accepted: Instant,
    /// Still reading its request: may be evicted.
    reading: Arc<AtomicBool>,
}

/// What the acceptor and the handlers share.
struct Shared {
    signatures: Signatures,
    host: Host,
    stop: Arc<AtomicBool>,
    conns: Mutex<Vec<Conn>>,
    received: AtomicU64,
}

/// Binds `listen` and serves it until `stop`; returns the acceptor thread (which joins every
/// handler before it ends) and the address.
pub(crate) fn spawn(
    listen: &str,
    secret: Vec<u8>,
    stop: Arc<AtomicBool>,
    host: Host,
) -> Result<(JoinHandle<()>, String), String> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| format!("`listen`: cannot listen on {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let shared = Arc::new(Shared {
        signatures: Signatures::new(secret),
        host,
        stop,
        conns: Mutex::new(Vec::new()),
        received: AtomicU64::new(0),
    });
    let thread = std::thread::Builder::new()
        .name("webhook-in".into())
        .spawn(move || accept(&listener, &shared))
        .map_err(|e| format!("cannot start the listener thread: {e}"))?;
    tracing::info!(addr = %addr, "webhook listener up");
    Ok((thread, addr))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The acceptor's loop; at stop, shuts every connection down and joins its handler.
fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        handlers.retain(|h| !h.is_finished());
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                if let Some(handler) = admit(shared, stream, next_id) {
                    handlers.push(handler);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    for conn in lock(&shared.conns).iter() {
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

/// Makes room for `stream` (evicting the connection reading the longest) and starts its
/// handler; answers 503 when every connection is busy delivering.
fn admit(shared: &Arc<Shared>, mut stream: TcpStream, id: u64) -> Option<JoinHandle<()>> {
    let clone = stream.try_clone().ok()?;
    let reading = Arc::new(AtomicBool::new(true));
    {
        let mut conns = lock(&shared.conns);
        if conns.len() >= MAX_CONNECTIONS {
            let oldest = conns
                .iter()
                .filter(|c| c.reading.load(Ordering::Acquire))
                .min_by_key(|c| c.accepted)
                .map(|c| c.id);
            match oldest {
                Some(oldest) => {
                    if let Some(at) = conns.iter().position(|c| c.id == oldest) {
                        let _ = conns.swap_remove(at).stream.shutdown(Shutdown::Both);
                    }
                }
                None => {
                    drop(conns);
                    let _ = stream.set_nonblocking(false);
                    let _ = respond(
                        &mut stream,
                        "503 Service Unavailable",
                        r#"{"error":"too many requests at once; retry"}"#,
                    );
                    return None;
                }
            }
        }
        conns.push(Conn {
            id,
            stream: clone,
            accepted: Instant::now(),
            reading: Arc::clone(&reading),
        });
    }
    let handler_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("webhook-req".into())
        .spawn(move || {
            if let Err(e) = serve(stream, &handler_shared, &reading) {
                tracing::debug!("webhook request failed: {e}");
            }
            lock(&handler_shared.conns).retain(|c| c.id != id);
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!("cannot start a request thread: {e}");
            lock(&shared.conns).retain(|c| c.id != id);
            None
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Reads into `buf` until `done(buf)` holds, at most `max` bytes, by `deadline`. `Ok(false)`
/// when the bound was reached first.
fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
    done: impl Fn(&[u8]) -> bool,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    while !done(buf) {
        if buf.len() >= max {
            return Ok(false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let want = chunk.len().min(max - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The headers the listener reads.
#[derive(Default)]
struct Headers {
    length: usize,
    signature: Option<String>,
    timestamp: Option<String>,
}

fn serve(mut stream: TcpStream, shared: &Shared, reading: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let accepted = Instant::now();
    let mut raw = Vec::new();
    let whole = read_until(
        &mut stream,
        &mut raw,
        MAX_HEAD,
        accepted + HEAD_TIMEOUT,
        |b| b.windows(4).any(|w| w == b"\r\n\r\n"),
    )?;
    if !whole {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            r#"{"error":"request head over 16 KiB"}"#,
        );
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut headers = Headers::default();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => headers.length = value.trim().parse().unwrap_or(usize::MAX),
                "x-hermes-signature" => headers.signature = Some(value.trim().to_owned()),
                "x-hermes-timestamp" => headers.timestamp = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let Some(chat) = path
        .strip_prefix("/hooks/")
        .filter(|c| !c.is_empty() && !c.contains('/'))
    else {
        return respond(
            &mut stream,
            "404 Not Found",
            r#"{"error":"POST /hooks/<chat>"}"#,
        );
    };
    if method != "POST" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            r#"{"error":"POST only"}"#,
        );
    }
    if headers.length > BODY_LIMIT {
        return respond(
            &mut stream,
            "413 Payload Too Large",
            r#"{"error":"body over 64 KiB"}"#,
        );
    }
    let mut body = raw.split_off(end);
    let length = headers.length;
    read_until(
        &mut stream,
        &mut body,
        length,
        accepted + BODY_TIMEOUT,
        |b| b.len() >= length,
    )?;
    body.truncate(length);
    // The request is read: from here on it is delivered, not evicted.
    reading.store(false, Ordering::Release);
    if let Err((status, error)) = shared.signatures.check(
        headers.signature.as_deref(),
        headers.timestamp.as_deref(),
        method,
        path,
        &body,
    ) {
        return respond(&mut stream, status, &error);
    }
    let n = shared.received.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("webhook-in-{}-{n}", shared.host.generation());
    let parsed = serde_json::from_slice(&body)
        .ok()
        .and_then(|v| hermes_plugin_api::json::inbound_from_json(v, chat, "webhook", &id));
    let Some(message) = parsed else {
        let error = serde_json::json!({ "error": "bad body: a JSON object with `text` (a string) or a `kind` is expected" }).to_string();
        return respond(&mut stream, "400 Bad Request", &error);
    };
    match shared.host.deliver(&message) {
        Ok(()) => respond(&mut stream, "204 No Content", ""),
        Err(e) => respond(
            &mut stream,
            "503 Service Unavailable",
            &serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
    }
}
