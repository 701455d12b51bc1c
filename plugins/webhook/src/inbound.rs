//! The inbound listener: one thread, one request per connection, every body signed.
//!
//! Webhook traffic is light; a plain listener served on one thread keeps the promise `stop`
//! makes (every thread joined) without a server library's own pool.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hermes_plugin_api::{Host, InboundMessage};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Request bodies larger than this are refused.
const BODY_LIMIT: usize = 64 * 1024;

/// Binds `listen` and serves it on a thread until `stop`; returns the thread and the address.
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
    let thread = std::thread::Builder::new()
        .name("webhook-in".into())
        .spawn(move || {
            let received = AtomicU64::new(0);
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(stream, &secret, &host, &received) {
                            tracing::debug!("webhook request failed: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the listener thread: {e}"))?;
    tracing::info!(addr = %addr, "webhook listener up");
    Ok((thread, addr))
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`; compared
/// in constant time.
pub(crate) fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_mac) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_mac) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn serve(
    mut stream: TcpStream,
    secret: &[u8],
    host: &Host,
    received: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut length = 0usize;
    let mut signature = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(usize::MAX),
                "x-hermes-signature" => signature = Some(value.trim().to_owned()),
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
    if length > BODY_LIMIT {
        return respond(
            &mut stream,
            "413 Payload Too Large",
            r#"{"error":"body over 64 KiB"}"#,
        );
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if !signature
        .as_deref()
        .is_some_and(|s| signature_ok(secret, &body, s))
    {
        return respond(
            &mut stream,
            "401 Unauthorized",
            r#"{"error":"missing or bad X-Hermes-Signature"}"#,
        );
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
    let n = received.fetch_add(1, Ordering::Relaxed) + 1;
    let message = InboundMessage::new(
        chat,
        parsed.user.unwrap_or_else(|| "webhook".into()),
        parsed.text,
        format!("webhook-in-{}-{n}", host.generation()),
    );
    match host.deliver(&message) {
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
    fn signatures() {
        let secret = b"0123456789abcdef";
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(b"{}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(secret, b"{}", &good));
        assert!(!signature_ok(secret, b"{ }", &good));
        assert!(!signature_ok(b"another secret!!", b"{}", &good));
        assert!(!signature_ok(secret, b"{}", "sha256=zz"));
        assert!(!signature_ok(
            secret,
            b"{}",
            &good.replace("sha256=", "md5=")
        ));
    }
}
