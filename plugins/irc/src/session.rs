//! The connection thread: connect, register, read, answer PING, write paced lines, reconnect.

use std::{
    io::{self, Read, Write},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use hermes_adapter_net::Conn;
use hermes_plugin_api::{Host, InboundMessage};

use crate::{Config, Shared, protocol};

/// How often the thread wakes to check the queue and the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// Silence from the server this long means the connection is dead.
const DEAD_AFTER: Duration = Duration::from_secs(300);

fn connect(config: &Config) -> io::Result<Conn> {
    let stream = hermes_adapter_net::connect(
        &config.server,
        Duration::from_millis(config.connect_timeout_ms),
        TICK,
    )?;
    if !config.tls {
        return Ok(Conn::Plain(stream));
    }
    let host = config
        .server
        .rsplit_once(':')
        .map_or(config.server.as_str(), |(h, _)| h);
    hermes_adapter_net::tls(stream, host, config.tls_ca_file.as_deref())
}

/// Runs until `shared.stop`: connects, serves a session, reconnects with backoff.
pub(crate) fn run(config: &Config, shared: &Shared, host: Host) {
    let mut backoff = Duration::from_millis(500);
    let max = Duration::from_millis(config.reconnect_max_ms.max(500));
    while !shared.stop.load(Ordering::Acquire) {
        let reason = match connect(config) {
            Ok(conn) => {
                shared
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .connections += 1;
                backoff = Duration::from_millis(500);
                session(config, shared, &host, conn)
            }
            Err(e) => format!("connecting to {}: {e}", config.server),
        };
        {
            let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            status.registered = false;
            status.last_error = Some(reason.clone());
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        tracing::warn!(server = %config.server, "disconnected: {reason}; retrying in {backoff:?}");
        let until = Instant::now() + backoff;
        while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(TICK);
        }
        backoff = (backoff * 2).min(max);
    }
}

fn write_line(conn: &mut Conn, line: &str) -> io::Result<()> {
    conn.write_all(line.as_bytes())?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

/// One connection's life; returns why it ended.
fn session(config: &Config, shared: &Shared, host: &Host, mut conn: Conn) -> String {
    let username = config
        .username
        .clone()
        .unwrap_or_else(|| config.nick.clone());
    let mut nick = config.nick.clone();
    let mut nick_len = 9usize.max(nick.len());
    let mut nick_attempt = 0;
    let mut greeting = Vec::new();
    if let Some(password) = &config.password {
        greeting.push(format!("PASS {password}"));
    }
    greeting.push(format!("NICK {nick}"));
    greeting.push(format!("USER {username} 0 * :{}", config.realname));
    for line in &greeting {
        if let Err(e) = write_line(&mut conn, line) {
            return format!("registering: {e}");
        }
    }
    let interval = Duration::from_millis(config.send_interval_ms);
    let mut tokens = f64::from(config.burst);
    let mut refilled = Instant::now();
    let mut registered = false;
    let mut lines = protocol::Lines::default();
    let mut chunk = [0u8; 4096];
    let mut last_heard = Instant::now();
    let mut received = 0u64;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            let _ = write_line(&mut conn, "QUIT :hermes-host stopping");
            return "stopping".into();
        }
        // Pacing: `burst` lines at once, then one per `interval`.
        if !interval.is_zero() {
            tokens = (tokens + refilled.elapsed().as_secs_f64() / interval.as_secs_f64())
                .min(f64::from(config.burst));
        } else {
            tokens = f64::from(config.burst);
        }
        refilled = Instant::now();
        while registered && tokens >= 1.0 {
            let Some(line) = shared
                .outgoing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            else {
                break;
            };
            if let Err(e) = write_line(&mut conn, &line) {
                // Not sent: put it back for the next connection.
                shared
                    .outgoing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_front(line);
                return format!("writing: {e}");
            }
            tokens -= 1.0;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return "the server closed the connection".into(),
            Ok(n) => {
                last_heard = Instant::now();
                lines.push(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_heard.elapsed() > DEAD_AFTER {
                    return format!("no data from the server for {DEAD_AFTER:?}");
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return format!("reading: {e}"),
        }
        while let Some(line) = lines.next_line() {
            let raw = match line {
                protocol::Line::Whole(raw) => raw,
                protocol::Line::TooLong => {
                    tracing::warn!(
                        server = %config.server,
                        max_bytes = protocol::MAX_LINE,
                        "the server sent a line over {} bytes; skipped it",
                        protocol::MAX_LINE
                    );
                    continue;
                }
            };
            let line = String::from_utf8_lossy(&raw);
            let Some(message) = protocol::Message::parse(&line) else {
                continue;
            };
            match message.command {
                "PING" => {
                    let token = message.params.first().copied().unwrap_or("");
                    if let Err(e) = write_line(&mut conn, &format!("PONG :{token}")) {
                        return format!("answering PING: {e}");
                    }
                }
                "001" => {
                    if let Some(accepted) = message.params.first() {
                        nick = (*accepted).to_owned();
                    }
                    registered = true;
                    {
                        let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                        status.registered = true;
                        status.nick = nick.clone();
                        status.last_error = None;
                    }
                    if !config.channels.is_empty()
                        && let Err(e) =
                            write_line(&mut conn, &format!("JOIN {}", config.channels.join(",")))
                    {
                        return format!("joining: {e}");
                    }
                    tracing::info!(server = %config.server, nick = %nick, "registered");
                }
                "005" => {
                    for token in &message.params {
                        if let Some(n) = token.strip_prefix("NICKLEN=").and_then(|n| n.parse().ok())
                        {
                            nick_len = n;
                        }
                    }
                }
                "433" | "436" | "437" if !registered => {
                    nick_attempt += 1;
                    if nick_attempt > 20 {
                        return "no free nick after 20 attempts".into();
                    }
                    nick = protocol::next_nick(&config.nick, nick_attempt, nick_len);
                    tracing::info!(nick = %nick, "nick in use; trying another");
                    if let Err(e) = write_line(&mut conn, &format!("NICK {nick}")) {
                        return format!("changing nick: {e}");
                    }
                }
                "432" if !registered => return format!("the server refuses the nick {nick:?}"),
                "NICK" if message.nick() == Some(nick.as_str()) => {
                    if let Some(new) = message.params.first() {
                        nick = (*new).to_owned();
                        shared.status.lock().unwrap_or_else(|e| e.into_inner()).nick = nick.clone();
                    }
                }
                "PRIVMSG" => {
                    let (Some(target), Some(text), Some(from)) = (
                        message.params.first(),
                        message.params.get(1),
                        message.nick(),
                    ) else {
                        continue;
                    };
                    // CTCP (other than ACTION) is not a chat message.
                    let text = match text.strip_prefix("\x01ACTION ") {
                        Some(action) => format!("* {from} {}", action.trim_end_matches('\x01')),
                        None if text.starts_with('\x01') => continue,
                        None => (*text).to_owned(),
                    };
                    let chat = if target.starts_with(['#', '&', '+', '!']) {
                        *target
                    } else {
                        from
                    };
                    received += 1;
                    let mut inbound = InboundMessage::new(
                        chat,
                        from,
                        text,
                        format!("irc-in-{}-{received}", host.generation()),
                    );
                    inbound.metadata.insert("target".into(), (*target).into());
                    if let Some(prefix) = message.prefix {
                        inbound.metadata.insert("prefix".into(), prefix.into());
                    }
                    if let Err(e) = host.deliver(&inbound) {
                        tracing::warn!("the host refused an inbound message: {e}");
                    }
                }
                "ERROR" => return format!("the server said: {}", message.params.join(" ")),
                _ => {}
            }
        }
    }
}
