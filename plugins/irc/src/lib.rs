//! The IRC adapter: registers with a server, joins channels, relays PRIVMSG in and out.
//!
//! Config (`[platforms.irc]`):
//! - `server = "host:port"` (required), `nick` (required), `channels = ["#ops", ...]`;
//! - `tls = false` (the public web roots are trusted, plus `tls_ca_file`, a PEM of private CAs),
//!   `password` (or the `IRC_PASSWORD` env var), `username`, `realname`;
//! - pacing: `burst = 4` lines at once, then one line per `send_interval_ms = 500`;
//! - `connect_timeout_ms = 5000`, `reconnect_max_ms = 30000`, `queue_limit = 1000` lines.
//!
//! A chat id is a channel (`#ops`) or a nick (a private message). One thread owns the
//! connection: it reads, answers PING, paces the queued lines, and reconnects with backoff
//! (rejoining the channels) when the server goes away. While it is not registered, sends fail
//! at once with a retryable error; lines already queued are sent after the reconnect. A nick in
//! use is retried as `nick_`, `nick2`, ... within the server's `NICKLEN`. Long texts are split
//! into lines that stay under 512 bytes as the server relays them. A message a route brought
//! from another platform is prefixed with its author: `<alice> text`. What the server sends is
//! read in time linear in its size; a line over 8,703 bytes (512 plus IRCv3's 8,191 for tags)
//! is skipped whole with a warning, and the next line is read as usual.

pub mod protocol;
mod session;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use hermes_plugin_api::{
    Health, HealthStatus, Host, OutboundMessage, Plugin, SendError, SendReceipt,
};
use serde::Deserialize;

/// `[platforms.irc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port`.
    pub server: String,
    /// The nick to register.
    pub nick: String,
    /// Channels to join.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Connect with TLS.
    #[serde(default)]
    pub tls: bool,
    /// A PEM file of CA certificates trusted besides the public roots (a private server).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Server password (`PASS`); `IRC_PASSWORD` when absent.
    #[serde(default)]
    pub password: Option<String>,
    /// The USER name; the nick when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// The real name.
    #[serde(default = "default_realname")]
    pub realname: String,
    /// Lines sent at once before pacing starts.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// One line per this many ms after the burst.
    #[serde(default = "default_interval")]
    pub send_interval_ms: u64,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Lines queued at most; beyond, sends fail (retryable).
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
}

fn default_realname() -> String {
    "hermes-host".into()
}
fn default_burst() -> u32 {
    4
}
fn default_interval() -> u64 {
    500
}
fn default_connect_timeout() -> u64 {
    5000
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_queue_limit() -> usize {
    1000
}

/// State shared between the plugin and its connection thread.
pub(crate) type Shared = hermes_adapter_net::Link<Status>;

/// What the connection thread reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Registered (001 received) on the current connection.
    pub(crate) registered: bool,
    /// The nick the server accepted.
    pub(crate) nick: String,
    /// Connections made so far.
    pub(crate) connections: u64,
    /// Why the last connection ended or failed.
    pub(crate) last_error: Option<String>,
}

/// A running IRC instance.
pub struct Irc {
    config: Config,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    sent: AtomicU64,
}

impl Irc {
    /// A snapshot of what the connection thread reports.
    fn status(&self) -> Status {
        self.shared.status()
    }

    /// Why sends fail and health is down while not connected.
    fn disconnected(&self, status: Status) -> String {
        let why = status.last_error.unwrap_or_else(|| "connecting".into());
        format!("not connected to {}: {why}", self.config.server)
    }
}

impl Plugin for Irc {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        let (host, port) = config
            .server
            .rsplit_once(':')
            .ok_or_else(|| format!("`server`: {:?} must be host:port", config.server))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "`server`: {:?} must be host:port with a port 1-65535",
                config.server
            ));
        }
        if !protocol::valid_nick(&config.nick) {
            return Err(format!("`nick`: {:?} is not a valid IRC nick", config.nick));
        }
        if let Some(bad) = config.channels.iter().find(|c| !protocol::valid_channel(c)) {
            return Err(format!("`channels`: {bad:?} is not a channel name (#name)"));
        }
        if config.tls_ca_file.is_some() && !config.tls {
            return Err("`tls_ca_file`: only meaningful with `tls = true`".into());
        }
        if config.burst == 0 {
            return Err("`burst`: must be at least 1".into());
        }
        if config.queue_limit == 0 {
            return Err("`queue_limit`: must be at least 1".into());
        }
        Ok(())
    }

    fn start(
        mut config: Config,
        host: Host,
        _previous: Option<hermes_plugin_api::State>,
    ) -> Result<Self, String> {
        if config.password.is_none() {
            config.password = std::env::var("IRC_PASSWORD").ok().filter(|p| !p.is_empty());
        }
        let shared = Arc::new(Shared::new(Status {
            nick: config.nick.clone(),
            ..Status::default()
        }));
        let thread = {
            let (config, shared) = (config.clone(), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("irc-conn".into())
                .spawn(move || session::run(&config, &shared, host))
                .map_err(|e| format!("cannot start the connection thread: {e}"))?
        };
        Ok(Irc {
            config,
            shared,
            thread: Some(thread),
            sent: AtomicU64::new(0),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let status = self.status();
        if !status.registered {
            return Err(SendError::retryable(self.disconnected(status)));
        }
        let target = message.chat_id.trim();
        if target.is_empty() || target.contains([' ', ',', '\r', '\n']) {
            return Err(SendError::permanent(format!(
                "{:?} is not a channel or nick",
                message.chat_id
            )));
        }
        // A message a route brought from another platform names its author.
        let text = message.text_naming_author();
        let lines = protocol::privmsg_lines(&status.nick, target, &text);
        if lines.is_empty() {
            return Err(SendError::permanent("nothing to send: the text is empty"));
        }
        let mut queue = self
            .shared
            .outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if queue.len() + lines.len() > self.config.queue_limit {
            return Err(SendError::retryable(format!(
                "send queue full ({} lines); slow down",
                queue.len()
            )));
        }
        queue.extend(lines);
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(SendReceipt {
            message_id: format!("irc-out-{n}"),
        })
    }

    fn health(&self) -> Health {
        let status = self.status();
        if status.registered {
            Health {
                status: HealthStatus::Healthy,
                detail: format!(
                    "registered as {} (connection {})",
                    status.nick, status.connections
                ),
            }
        } else {
            Health::unhealthy(self.disconnected(status))
        }
    }

    fn stop(mut self) -> Result<(), String> {
        hermes_adapter_net::stop(&self.shared, self.thread.take())
    }
}

hermes_plugin_api::export_plugin!(Irc);
