//! The host's own message types: plain std values, free of anything a plugin allocated.

use serde::{Deserialize, Serialize};

pub use hermes_plugin_api::MessageKind;

/// A message that arrived on a platform, as the host hands it to the SSE stream, routes and
/// the journal.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inbound {
    /// The platform id it arrived on.
    pub platform: String,
    /// What it does: a new message, an edit, a delete or a reaction.
    #[serde(default)]
    pub kind: MessageKind,
    /// Where it arrived.
    pub chat_id: String,
    /// Who sent it.
    pub user: String,
    /// The text.
    pub text: String,
    /// The platform's id for it.
    pub message_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The id of a message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The thread it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// The message an edit, delete or reaction is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// A reaction's emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// A reaction taken back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    /// Files: name, type, size and URL go out (SSE, journal); bytes stay in the gateway, for
    /// the routes that carry them to other platforms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Extra fields, a JSON object.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The generation of the instance that delivered it.
    pub generation: u64,
}

/// A message to send through a platform. HTTP bodies have types of their own
/// (`api::bodies`); this serialises as a send body for the control client.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Outbound {
    /// What it does: a new message, an edit, a delete or a reaction.
    #[serde(skip_serializing_if = "is_message")]
    pub kind: MessageKind,
    /// The platform's address: channel, nick, topic...
    pub chat_id: String,
    /// The text (an edit's new text).
    pub text: String,
    /// The id of a message this one answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The thread it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// The message an edit, delete or reaction is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// A reaction's emoji.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// Take a reaction back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    /// Files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The client's key: the same key is the same message, resent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Extra fields, a JSON object.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Outbound {
    /// A text message with no reply-to and no metadata.
    pub fn new(chat_id: impl Into<String>, text: impl Into<String>) -> Self {
        Outbound {
            chat_id: chat_id.into(),
            text: text.into(),
            ..Outbound::default()
        }
    }

    /// Whether a level-1.0 plugin can carry it: a plain text message, no thread, no files.
    pub fn is_level_1_0(&self) -> bool {
        self.kind == MessageKind::Message && self.thread_id.is_none() && self.attachments.is_empty()
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_message(kind: &MessageKind) -> bool {
    *kind == MessageKind::Message
}

/// A file a message carries: its bytes (`data_base64` in JSON requests), or a URL.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// The file name.
    pub name: String,
    /// Its MIME type.
    pub mime: String,
    /// Its size in bytes (the bytes' length when they are given).
    #[serde(default)]
    pub size: u64,
    /// The bytes: read from `data_base64`, never written out (SSE and the journal say the
    /// size; the bytes go to the platform alone).
    #[serde(
        default,
        rename = "data_base64",
        skip_serializing,
        deserialize_with = "base64_bytes"
    )]
    pub data: Vec<u8>,
    /// Where it can be fetched, instead of the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn base64_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine as _;
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
}

/// A successful send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The platform's id for the sent message.
    pub message_id: String,
}

/// An instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working.
    Healthy,
    /// Working with trouble.
    Degraded,
    /// Not working.
    Unhealthy,
}

/// An instance's health and the plugin's note on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// Free text, possibly empty.
    pub detail: String,
}

/// State exported by one generation for the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginState {
    /// The plugin's schema version for `bytes`.
    pub schema: u32,
    /// The state.
    pub bytes: Vec<u8>,
}

/// Caps on what a plugin hands the host, enforced where its values become the host's: a plugin
/// cannot make the gateway journal, return or keep a value of any size.
pub mod limits {
    /// A message id returned by `send`; a longer one is cut (the message was sent).
    pub const MESSAGE_ID_BYTES: usize = 256;
    /// An error or health text; a longer one is cut.
    pub const ERROR_BYTES: usize = 4096;
    /// An inbound message's text; a longer message is refused.
    pub const INBOUND_TEXT_BYTES: usize = 64 * 1024;
    /// An inbound message's chat id, user and message id; a longer one is refused.
    pub const INBOUND_FIELD_BYTES: usize = 1024;
    /// An inbound message's metadata as JSON; a larger one is refused.
    pub const METADATA_BYTES: usize = 16 * 1024;
    /// Attachments on one message; more are refused.
    pub const ATTACHMENTS: usize = 10;
    /// One attachment's bytes, unless the config sets another cap.
    pub const ATTACHMENT_BYTES: u64 = 10 * 1024 * 1024;

    /// `text` cut to at most `max` bytes at a character boundary, marked when cut.
    pub fn cut(mut text: String, max: usize) -> String {
        if text.len() <= max {
            return text;
        }
        const MARK: &str = "…(cut)";
        let mut end = max.saturating_sub(MARK.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(MARK);
        text
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn cuts_at_a_character_boundary() {
            assert_eq!(super::cut("short".into(), 10), "short");
            let cut = super::cut("é".repeat(100), 20);
            assert!(cut.len() <= 20 && cut.ends_with("…(cut)"), "{cut}");
        }
    }
}
