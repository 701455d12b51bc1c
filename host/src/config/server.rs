//! `[server]`: the listeners, the token, the runtime and the bounds on clients.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The public HTTP API's address.
    pub listen: SocketAddr,
    /// The control API's Unix socket.
    pub control_socket: PathBuf,
    /// Bearer token for the public API; required off loopback.
    pub api_token: Option<String>,
    /// Threads of the async runtime (HTTP, routes).
    pub worker_threads: usize,
    /// The public port's connection limit; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// Time a client has to send a whole request head.
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body.
    pub body_read_timeout: Duration,
    /// Names (`host` or `host:port`) the public API answers to besides its bound address.
    pub allowed_hosts: Vec<String>,
    /// `idle_quiet_secs`, default 60: how long without traffic `/api/idle` wants by default.
    pub idle_quiet: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<SocketAddr>,
    control_socket: Option<PathBuf>,
    api_token: Option<String>,
    worker_threads: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    allowed_hosts: Option<Vec<String>>,
    idle_quiet_secs: Option<u64>,
}

/// Checks `[server]` and fills in its defaults; `at` anchors a relative path. Errors name the key.
pub(super) fn server_config(
    raw: RawServer,
    at: impl Fn(PathBuf) -> PathBuf,
) -> Result<ServerConfig, String> {
    Ok(ServerConfig {
        listen: raw.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8642).into()),
        control_socket: at(raw
            .control_socket
            .unwrap_or_else(|| ".hermes/control.sock".into())),
        api_token: match raw.api_token {
            // A token a client cannot send back as it is (HTTP trims the header's
            // whitespace) would never match.
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(
                            "key `server.api_token`: must not hold spaces or control characters (check for a trailing space or newline)".into(),
                        );
            }
            Some(t) if t.chars().count() < MIN_TOKEN_CHARS => {
                return Err(format!(
                    "key `server.api_token`: at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 24`)"
                ));
            }
            token => token,
        },
        worker_threads: match raw.worker_threads {
            Some(n) if !(1..=MAX_WORKER_THREADS).contains(&n) => {
                return Err(format!(
                    "key `server.worker_threads`: from 1 to {MAX_WORKER_THREADS}"
                ));
            }
            Some(n) => n,
            None => default_worker_threads(),
        },
        max_connections: match raw.max_connections {
            Some(0) => {
                return Err("key `server.max_connections`: at least 1".into());
            }
            n => n,
        },
        header_read_timeout: match raw.header_read_timeout_ms {
            Some(0) => {
                return Err("key `server.header_read_timeout_ms`: at least 1".into());
            }
            Some(ms) => Duration::from_millis(ms),
            None => crate::http::DEFAULT_HEADER_READ_TIMEOUT,
        },
        body_read_timeout: match raw.body_read_timeout_ms {
            Some(0) => {
                return Err("key `server.body_read_timeout_ms`: at least 1".into());
            }
            Some(ms) => Duration::from_millis(ms),
            None => crate::http::DEFAULT_BODY_READ_TIMEOUT,
        },
        allowed_hosts: {
            let hosts = raw.allowed_hosts.unwrap_or_default();
            if let Some((i, bad)) = hosts.iter().enumerate().find(|(_, h)| {
                h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
            }) {
                return Err(format!(
                    "key `server.allowed_hosts[{i}]`: {bad:?} is not a host name or `host:port`"
                ));
            }
            hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect()
        },
        idle_quiet: match raw.idle_quiet_secs {
            // Idle straight after traffic would let a supervisor stop a busy gateway.
            Some(0) => {
                return Err("key `server.idle_quiet_secs`: at least 1".into());
            }
            secs => Duration::from_secs(secs.unwrap_or(60)),
        },
    })
}

/// The shortest `server.api_token` accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The most runtime threads `server.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 512;

/// One runtime thread per core but one: every call into a plugin runs on that plugin's own
/// worker threads, which need a core too. Measured on 2 cores: 1 runtime thread served 0.67-0.72
/// of a bare axum handler's send throughput where 2 threads served 0.56-0.62 (BENCHMARKS.md).
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}
