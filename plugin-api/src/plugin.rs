//! The safe face of the API: the [`Plugin`] trait and the values it trades in.

use serde::de::DeserializeOwned;

use crate::Host;

/// A platform adapter. Implement it, then export it with [`export_plugin!`](crate::export_plugin).
///
/// The host calls every method from its own worker threads, never from the plugin's, and
/// serialises nothing: `send` and `health` may run while another `send` is in flight.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// The platform's settings, read from its `[platforms.<id>]` table.
    ///
    /// The host's own keys (`start`, `call_timeout_ms`, `idle_unload_secs`) are removed first;
    /// unknown keys are the plugin's call (`#[serde(deny_unknown_fields)]` refuses them).
    type Config: DeserializeOwned;

    /// Checks a config beyond what deserialising already checked. No side effects: no sockets,
    /// no files, no threads. The error names the offending key.
    fn validate_config(config: &Self::Config) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Starts an instance: connect, spawn threads, whatever the platform needs.
    ///
    /// `previous` is the state the previous generation exported ([`Plugin::export_state`])
    /// when this start is a reload's; `None` on a first start, and when the previous
    /// generation exported nothing or hung (a hung instance cannot export). It arrives here,
    /// before any thread of this instance runs, so a thread spawned in `start` sees it from its
    /// first instruction: there is no window in which it works from a blank state.
    fn start(config: Self::Config, host: Host, previous: Option<State>) -> Result<Self, String>;

    /// Sends one message.
    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError>;

    /// Reports health; the default says healthy.
    fn health(&self) -> Health {
        Health::healthy()
    }

    /// Exports state for the next generation, before `stop`. The default keeps none.
    fn export_state(&self) -> Option<State> {
        None
    }

    /// Stops the instance. It must join every thread it started and shut down any runtime it
    /// built: the host unmaps the library right after, and a thread still running then crashes
    /// the process.
    fn stop(self) -> Result<(), String>;
}

/// What a message does: most are new messages; level 1.1 adds edits, deletes and reactions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A new message.
    #[default]
    Message,
    /// New text for the message `target_id`.
    Edit,
    /// The message `target_id` is taken back.
    Delete,
    /// `emoji` on the message `target_id` (`remove` takes it back).
    Reaction,
}

impl MessageKind {
    /// The kind as the ABI carries it (one of the `abi::KIND_*` constants).
    pub fn to_ffi(self) -> u8 {
        match self {
            MessageKind::Message => crate::abi::KIND_MESSAGE,
            MessageKind::Edit => crate::abi::KIND_EDIT,
            MessageKind::Delete => crate::abi::KIND_DELETE,
            MessageKind::Reaction => crate::abi::KIND_REACTION,
        }
    }

    /// The kind an ABI value stands for; an unknown one (from a later level) reads as a
    /// plain message.
    pub fn from_ffi(kind: u8) -> Self {
        match kind {
            crate::abi::KIND_EDIT => MessageKind::Edit,
            crate::abi::KIND_DELETE => MessageKind::Delete,
            crate::abi::KIND_REACTION => MessageKind::Reaction,
            _ => MessageKind::Message,
        }
    }

    /// `message`, `edit`, `delete` or `reaction`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Message => "message",
            MessageKind::Edit => "edit",
            MessageKind::Delete => "delete",
            MessageKind::Reaction => "reaction",
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file a message carries: its bytes, or a URL where it can be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attachment {
    /// The file name.
    pub name: String,
    /// Its MIME type (`image/png`).
    pub mime: String,
    /// Its size in bytes.
    pub size: u64,
    /// The bytes; empty when `url` is set.
    pub data: Vec<u8>,
    /// Where it can be fetched, instead of `data`.
    pub url: Option<String>,
}

/// A message to send.
///
/// A level-1.1 host fills every field; a plain text message has kind `Message` and leaves the
/// rest empty. Build one with [`OutboundMessage::new`] and struct update syntax.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutboundMessage {
    /// What it does: a new message, an edit, a delete or a reaction.
    pub kind: MessageKind,
    /// Channel, nick, topic...: the platform's own address.
    pub chat_id: String,
    /// The text (an edit's new text; empty for a delete or a reaction).
    pub text: String,
    /// The id of a message this one answers.
    pub reply_to: Option<String>,
    /// The thread it belongs to.
    pub thread_id: Option<String>,
    /// The message an edit, delete or reaction is about.
    pub target_id: Option<String>,
    /// A reaction's emoji.
    pub emoji: Option<String>,
    /// For a reaction: take it back.
    pub remove: bool,
    /// Files, within the host's `max_attachment_bytes` each.
    pub attachments: Vec<Attachment>,
    /// The client's key for this message: a send with a key seen before is the same message,
    /// resent (platforms that dedupe by a transaction id can use it as that id).
    pub idempotency_key: Option<String>,
    /// Extra fields, a JSON object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The metadata key with which the host names the author of a message a route brought from
/// another platform.
pub const ROUTED_USER_KEY: &str = "hermes_routed_user";

impl OutboundMessage {
    /// A text message to `chat_id`.
    pub fn new(chat_id: impl Into<String>, text: impl Into<String>) -> Self {
        OutboundMessage {
            chat_id: chat_id.into(),
            text: text.into(),
            ..OutboundMessage::default()
        }
    }

    /// The text, as `<author> text` when a route brought it from another platform: on a chat
    /// network the gateway's account says it, so the text names who did.
    pub fn text_naming_author(&self) -> String {
        match self.metadata.get(ROUTED_USER_KEY).and_then(|u| u.as_str()) {
            Some(user) => format!("<{user}> {}", self.text),
            None => self.text.clone(),
        }
    }
}

/// A message that arrived on the platform.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InboundMessage {
    /// What it does: a new message, an edit, a delete or a reaction.
    pub kind: MessageKind,
    /// Where it arrived.
    pub chat_id: String,
    /// Who sent it.
    pub user: String,
    /// The text (an edit's new text).
    pub text: String,
    /// The platform's id for it.
    pub message_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The id of a message this one answers.
    pub reply_to: Option<String>,
    /// The thread it belongs to.
    pub thread_id: Option<String>,
    /// The message an edit, delete or reaction is about.
    pub target_id: Option<String>,
    /// A reaction's emoji.
    pub emoji: Option<String>,
    /// For a reaction: it was taken back.
    pub remove: bool,
    /// Files (a level-1.0 host receives none of them).
    pub attachments: Vec<Attachment>,
    /// Extra fields, a JSON object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl InboundMessage {
    /// A message stamped with the current time and no metadata.
    pub fn new(
        chat_id: impl Into<String>,
        user: impl Into<String>,
        text: impl Into<String>,
        message_id: impl Into<String>,
    ) -> Self {
        InboundMessage {
            chat_id: chat_id.into(),
            user: user.into(),
            text: text.into(),
            message_id: message_id.into(),
            timestamp_ms: now_ms(),
            ..InboundMessage::default()
        }
    }

    /// This message as an edit, delete or reaction about `target_id`.
    #[must_use]
    pub fn about(mut self, kind: MessageKind, target_id: impl Into<String>) -> Self {
        self.kind = kind;
        self.target_id = Some(target_id.into());
        self
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a successful send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The platform's id for the sent message.
    pub message_id: String,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// What went wrong.
    pub message: String,
    /// Whether the same send may succeed later (peer away, rate limited...).
    pub retryable: bool,
    /// The platform asked to wait this long before sending again (a rate limit's
    /// `Retry-After`); the host waits at least that long before its next try.
    pub retry_after_ms: Option<u64>,
}

impl SendError {
    /// A failure that will not go away by retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError {
            message: message.into(),
            retryable: false,
            retry_after_ms: None,
        }
    }

    /// A failure worth retrying later.
    pub fn retryable(message: impl Into<String>) -> Self {
        SendError {
            message: message.into(),
            retryable: true,
            retry_after_ms: None,
        }
    }

    /// A failure worth retrying after `ms` milliseconds, as the platform asked.
    #[must_use]
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retryable = true;
        self.retry_after_ms = Some(ms);
        self
    }
}

/// Why the host refused an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// This instance no longer serves (replaced by a reload, stopping, hung): stop delivering.
    Stale,
    /// This message was refused (too large, malformed...): the reason says why.
    Refused(String),
}

impl std::fmt::Display for DeliverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliverError::Stale => f.write_str("this instance no longer serves"),
            DeliverError::Refused(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for DeliverError {}

impl From<DeliverError> for String {
    fn from(e: DeliverError) -> String {
        e.to_string()
    }
}

/// How an instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Working.
    Healthy,
    /// Working, with trouble (reconnecting, rate limited...).
    Degraded,
    /// Not working.
    Unhealthy,
}

/// An instance's health and a note on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// Free text, possibly empty.
    pub detail: String,
}

impl Health {
    /// Healthy, no note.
    pub fn healthy() -> Self {
        Health {
            status: HealthStatus::Healthy,
            detail: String::new(),
        }
    }

    /// Unhealthy, with the reason.
    pub fn unhealthy(detail: impl Into<String>) -> Self {
        Health {
            status: HealthStatus::Unhealthy,
            detail: detail.into(),
        }
    }
}

/// State handed from one generation to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The plugin's own schema version for `bytes`; check it before decoding.
    pub schema: u32,
    /// The state.
    pub bytes: Vec<u8>,
}
