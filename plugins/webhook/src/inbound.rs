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
//! within [`WINDOW`] of the listener's clock, and that signature was not seen before within the
//! window (a replay). So a captured request cannot be sent again, later, or to another chat.
//! The body-only `sha256=` signature of earlier versions is refused, saying so.
//!
//! Every thread is joined at `stop`: the acceptor stops, every connection is shut down, and
//! each handler ends at its next read.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hermes_plugin_api::{Host, InboundMessage};
use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// How far a request's timestamp may be from the listener's clock, either way.
pub(crate) const WINDOW: Duration = Duration::from_secs(300);

/// Signatures remembered (for replays) at most; past it, new requests are refused (503) until
/// old ones leave the window, rather than forgetting one that could then be replayed.
const MAX_REMEMBERED: usize = 100_000;

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
    secret: Vec<u8>,
    host: Host,
    stop: Arc<AtomicBool>,
    conns: Mutex<Vec<Conn>>,
    /// Signatures seen, with when each leaves the window.
    seen: Mutex<HashMap<Vec<u8>, u64>>,
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
        secret,
        host,
        stop,
        conns: Mutex::new(Vec::new()),
        seen: Mutex::new(HashMap::new()),
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

/// The message a `v1` signature covers.
pub(crate) fn signed_message(timestamp: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}\n{method}\n{path}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// The MAC a `v1=<hex>` signature carries, if it is one.
fn v1_mac(signature: &str) -> Option<Vec<u8>> {
    hex::decode(signature.trim().strip_prefix("v1=")?).ok()
}

/// Whether `mac` is the HMAC-SHA256 of `message` under `secret`; compared in constant time.
pub(crate) fn mac_ok(secret: &[u8], message: &[u8], mac: &[u8]) -> bool {
    let Ok(mut hmac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    hmac.update(message);
    hmac.verify_slice(mac).is_ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a request's signature is not accepted, as the client is told.
fn check_signature(
    shared: &Shared,
    headers: &Headers,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), (&'static str, String)> {
    let unauthorized = |why: &str| ("401 Unauthorized", format!(r#"{{"error":"{why}"}}"#));
    let Some(signature) = headers.signature.as_deref() else {
        return Err(unauthorized("missing X-Hermes-Signature"));
    };
    if signature.trim().starts_with("sha256=") {
        return Err(unauthorized(
            "body-only sha256= signatures are no longer accepted: sign v1 (timestamp, method, path and body; see the README)",
        ));
    }
    let Some(mac) = v1_mac(signature) else {
        return Err(unauthorized("X-Hermes-Signature must be v1=<hex>"));
    };
    let Some(timestamp) = headers.timestamp.as_deref() else {
        return Err(unauthorized("missing X-Hermes-Timestamp"));
    };
    if !mac_ok(
        &shared.secret,
        &signed_message(timestamp, method, path, body),
        &mac,
    ) {
        return Err(unauthorized("bad X-Hermes-Signature"));
    }
    let now = now_secs();
    let Some(at) = timestamp.parse::<u64>().ok() else {
        return Err(unauthorized("X-Hermes-Timestamp must be Unix seconds"));
    };
    if at.abs_diff(now) > WINDOW.as_secs() {
        return Err(unauthorized(
            "X-Hermes-Timestamp is outside the 300 s window (a replay, or a clock off)",
        ));
    }
    let mut seen = lock(&shared.seen);
    if seen.len() >= MAX_REMEMBERED {
        seen.retain(|_, until| *until > now);
        if seen.len() >= MAX_REMEMBERED {
            return Err((
                "503 Service Unavailable",
                r#"{"error":"too many signed requests within the window; retry"}"#.into(),
            ));
        }
    }
    if seen.insert(mac, at + WINDOW.as_secs()).is_some() {
        return Err(unauthorized("this signature was seen already (a replay)"));
    }
    Ok(())
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
    if let Err((status, error)) = check_signature(shared, &headers, method, path, &body) {
        return respond(&mut stream, status, &error);
    }
    #[derive(serde::Deserialize)]
    struct Body {
        text: String,
        #[serde(default)]
        user: Option<String>,
    }
    let parsed: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let error = serde_json::json!({ "error": format!("bad body: {e}") }).to_string();
            return respond(&mut stream, "400 Bad Request", &error);
        }
    };
    let n = shared.received.fetch_add(1, Ordering::Relaxed) + 1;
    let message = InboundMessage::new(
        chat,
        parsed.user.unwrap_or_else(|| "webhook".into()),
        parsed.text,
        format!("webhook-in-{}-{n}", shared.host.generation()),
    );
    match shared.host.deliver(&message) {
        Ok(()) => respond(&mut stream, "204 No Content", ""),
        Err(e) => respond(
            &mut stream,
            "503 Service Unavailable",
            &serde_json::json!({ "error": e }).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_method_path_and_body() {
        let secret = b"0123456789abcdef";
        let message = signed_message("1700000000", "POST", "/hooks/a", b"{}");
        assert_eq!(message, b"1700000000\nPOST\n/hooks/a\n{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(&message);
        let good = mac.finalize().into_bytes().to_vec();
        assert!(mac_ok(secret, &message, &good));
        for other in [
            signed_message("1700000001", "POST", "/hooks/a", b"{}"),
            signed_message("1700000000", "POST", "/hooks/b", b"{}"),
            signed_message("1700000000", "PUT", "/hooks/a", b"{}"),
            signed_message("1700000000", "POST", "/hooks/a", b"{ }"),
        ] {
            assert!(!mac_ok(secret, &other, &good));
        }
        assert!(!mac_ok(b"another secret!!", &message, &good));
        assert_eq!(
            v1_mac(&format!("v1={}", hex::encode(&good))),
            Some(good.clone())
        );
        assert_eq!(v1_mac("v1=zz"), None);
        assert_eq!(v1_mac(&format!("sha256={}", hex::encode(&good))), None);
    }
}
