//! The XMPP adapter: a client with STARTTLS, SASL PLAIN over TLS, resource binding, 1:1 chats
//! and multi-user chat rooms (XEP-0045).
//!
//! Config (`[platforms.xmpp]`):
//! - `jid = "hermes@example.org"` (required; a `/resource` part is used as the resource),
//!   `password` (or the `XMPP_PASSWORD` env var);
//! - `server = "host:port"` (default: the JID's domain, port 5222);
//! - `tls = "starttls"` (default; the public web roots are trusted, plus `tls_ca_file`, a PEM of
//!   private CAs) or `"none"`, accepted only for a server on a loopback address;
//! - `rooms = ["ops@conference.example.org"]`: rooms joined as `nick` (default: the JID's local
//!   part), without their history;
//! - `connect_timeout_ms = 5000`, `reconnect_max_ms = 30000`, `queue_limit = 1000` stanzas;
//! - `upload_service = "upload.example.org"`: the HTTP upload component (XEP-0363) files are
//!   put to ([`upload`]); without it a file goes only as a URL it already has.
//!
//! A chat id is a bare JID (a 1:1 chat) or the JID of a configured room (a groupchat message).
//! One thread owns the connection: it reads stanzas, answers pings, writes what sends queued,
//! and reconnects with backoff (joining the rooms again) when the server goes away. While it is
//! not connected, sends fail at once with a retryable error; stanzas already queued are written
//! after the reconnect. Inbound: `chat` and `normal` messages with a body (chat id and user: the
//! sender's bare JID) and room messages (chat id: the room; user: the sender's nick), except its
//! own reflections in rooms and the history a room replays (`<delay/>`). Not supported: SCRAM
//! (PLAIN is only ever sent inside TLS), stream management (XEP-0198), end-to-end encryption,
//! direct TLS (port 5223). A stanza over 1 MiB or nested over 64 elements deep ends the
//! connection with a warning naming the bound, and the adapter reconnects.

mod kinds;
mod session;
mod upload;
pub mod xml;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hermes_plugin_api::{
    Health, HealthStatus, Host, MessageKind, OutboundMessage, Plugin, SendError, SendReceipt,
};
use serde::Deserialize;

/// `[platforms.xmpp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `user@domain`, optionally `/resource`.
    pub jid: String,
    /// The password; `XMPP_PASSWORD` when absent.
    #[serde(default)]
    pub password: Option<String>,
    /// `host:port`; the JID's domain on 5222 when absent.
    #[serde(default)]
    pub server: Option<String>,
    /// `starttls` or `none`.
    #[serde(default)]
    pub tls: Tls,
    /// A PEM file of CA certificates trusted besides the public roots (a private server).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Rooms to join.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// The nick in rooms; the JID's local part when absent.
    #[serde(default)]
    pub nick: Option<String>,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Stanzas queued at most; beyond, sends fail (retryable).
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// The HTTP upload component (XEP-0363) files' bytes go to, e.g. `upload.example.org`.
    #[serde(default)]
    pub upload_service: Option<String>,
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Upgrade with STARTTLS before authenticating (required).
    #[default]
    Starttls,
    /// No TLS: only for a server on a loopback address (local tests).
    None,
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

/// A JID split: `local@domain/resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jid {
    /// The local part.
    pub local: String,
    /// The domain.
    pub domain: String,
    /// The resource, if any.
    pub resource: Option<String>,
}

impl Jid {
    /// Parses `local@domain[/resource]`; `None` when a part is missing or has a space.
    pub fn parse(text: &str) -> Option<Jid> {
        let (bare, resource) = match text.split_once('/') {
            Some((b, r)) if !r.is_empty() => (b, Some(r.to_owned())),
            Some(_) => return None,
            None => (text, None),
        };
        let (local, domain) = bare.split_once('@')?;
        let ok = |s: &str| !s.is_empty() && !s.contains([' ', '@', '/', '<', '>', '"', '\'', '&']);
        (ok(local) && ok(domain)).then(|| Jid {
            local: local.to_owned(),
            domain: domain.to_owned(),
            resource,
        })
    }

    /// `local@domain`.
    pub fn bare(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

impl Config {
    /// Where to connect: `server`, or the JID's domain on 5222.
    pub(crate) fn address(&self, jid: &Jid) -> String {
        self.server
            .clone()
            .unwrap_or_else(|| format!("{}:5222", jid.domain))
    }
}

/// State shared between the plugin and its connection thread.
pub(crate) type Shared = hermes_adapter_net::Link<Status>;

/// What the connection thread reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Bound to a resource on the current connection.
    pub(crate) online: bool,
    /// The full JID the server bound.
    pub(crate) bound: String,
    /// Connections made so far.
    pub(crate) connections: u64,
    /// Why the last connection ended or failed.
    pub(crate) last_error: Option<String>,
}

/// A running XMPP instance.
pub struct Xmpp {
    config: Config,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    sent: AtomicU64,
    /// The reactions we sent, per message (XEP-0444 sends the whole set).
    reactions: std::sync::Mutex<kinds::ReactionSets>,
    /// Upload slot requests waiting for their answer.
    iqs: Arc<upload::Iqs>,
}

impl Xmpp {
    fn status(&self) -> Status {
        self.shared.status()
    }

    fn disconnected(&self, status: Status) -> String {
        let why = status.last_error.unwrap_or_else(|| "connecting".into());
        format!("not connected as {}: {why}", self.config.jid)
    }
}

fn is_loopback(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Plugin for Xmpp {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        let jid = Jid::parse(&config.jid)
            .ok_or_else(|| format!("`jid`: {:?} is not a JID (user@domain)", config.jid))?;
        let address = config.address(&jid);
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!(
                "`server`: {address:?} must be host:port with a port 1-65535"
            ));
        }
        if config.tls == Tls::None && !is_loopback(&address) {
            return Err(format!(
                "`tls`: \"none\" would send the password in clear to {address}; it is accepted for a server on a loopback address only"
            ));
        }
        if config.tls_ca_file.is_some() && config.tls == Tls::None {
            return Err("`tls_ca_file`: only meaningful with `tls = \"starttls\"`".into());
        }
        if let Some(bad) = config
            .rooms
            .iter()
            .find(|r| Jid::parse(r).is_none_or(|j| j.resource.is_some()))
        {
            return Err(format!("`rooms`: {bad:?} is not a room JID (room@service)"));
        }
        if config
            .nick
            .as_deref()
            .is_some_and(|n| n.trim().is_empty() || n.contains('/'))
        {
            return Err("`nick`: must not be empty or hold a `/`".into());
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
            config.password = std::env::var("XMPP_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty());
        }
        if config.password.is_none() {
            return Err("`password`: not set (nor XMPP_PASSWORD)".into());
        }
        let shared = Arc::new(Shared::new(Status::default()));
        let iqs = Arc::new(upload::Iqs::default());
        let thread = {
            let (config, shared, iqs) = (config.clone(), Arc::clone(&shared), Arc::clone(&iqs));
            std::thread::Builder::new()
                .name("xmpp-conn".into())
                .spawn(move || session::run(&config, &shared, &iqs, host))
                .map_err(|e| format!("cannot start the connection thread: {e}"))?
        };
        Ok(Xmpp {
            config,
            shared,
            thread: Some(thread),
            sent: AtomicU64::new(0),
            reactions: std::sync::Mutex::default(),
            iqs,
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let status = self.status();
        if !status.online {
            return Err(SendError::retryable(self.disconnected(status)));
        }
        let to = message.chat_id.trim();
        if Jid::parse(to).is_none() {
            return Err(SendError::permanent(format!(
                "{:?} is not a JID (user@domain or room@service)",
                message.chat_id
            )));
        }
        let kind = if self.config.rooms.iter().any(|r| r == to) {
            "groupchat"
        } else {
            "chat"
        };
        // The client's idempotency key as the stanza id (XMPP servers and archives dedupe
        // by it), else our own.
        let id = match &message.idempotency_key {
            Some(key) => format!("hermes-{key}"),
            None => {
                let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
                format!("hermes-{}-{n}", std::process::id())
            }
        };
        // A message of files alone is one stanza per file; otherwise the text comes first.
        let mut stanzas = Vec::new();
        let mut first = id.clone();
        if !(message.kind == MessageKind::Message
            && message.text.is_empty()
            && !message.attachments.is_empty())
        {
            stanzas.push(
                kinds::stanza(
                    &message,
                    to,
                    kind,
                    &id,
                    &mut self.reactions.lock().unwrap_or_else(|e| e.into_inner()),
                )
                .map_err(SendError::permanent)?,
            );
        }
        for (i, file) in message.attachments.iter().enumerate() {
            let url = match &file.url {
                Some(url) => url.clone(),
                None => {
                    let service = self.config.upload_service.as_deref().ok_or_else(|| {
                        SendError::permanent(format!(
                            "`{}`: sending a file's bytes needs `upload_service` (the XEP-0363 upload component, e.g. upload.example.org)",
                            file.name
                        ))
                    })?;
                    let timeout = Duration::from_millis(self.config.connect_timeout_ms);
                    upload::upload(
                        &self.shared,
                        &self.iqs,
                        service,
                        file,
                        &format!("{id}-up{i}"),
                        timeout,
                    )
                    .map_err(SendError::retryable)?
                }
            };
            let file_id = format!("{id}-f{i}");
            if stanzas.is_empty() {
                first.clone_from(&file_id);
            }
            stanzas.push(upload::oob_message(to, kind, &file_id, &url));
        }
        let mut queue = self
            .shared
            .outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if queue.len() + stanzas.len() > self.config.queue_limit {
            return Err(SendError::retryable(format!(
                "send queue full ({} stanzas); slow down",
                queue.len()
            )));
        }
        queue.extend(stanzas);
        Ok(SendReceipt { message_id: first })
    }

    fn health(&self) -> Health {
        let status = self.status();
        if status.online {
            Health {
                status: HealthStatus::Healthy,
                detail: format!(
                    "online as {} (connection {})",
                    status.bound, status.connections
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

hermes_plugin_api::export_plugin!(Xmpp);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids() {
        let j = Jid::parse("hermes@localhost/bot").unwrap();
        assert_eq!(
            (j.bare(), j.resource.as_deref()),
            ("hermes@localhost".into(), Some("bot"))
        );
        for bad in ["localhost", "@x", "a@", "a b@c", "a@b/"] {
            assert!(Jid::parse(bad).is_none(), "{bad}");
        }
        assert!(is_loopback("127.0.0.1:5222") && is_loopback("localhost:1"));
        assert!(!is_loopback("example.org:5222"));
    }
}
