//! The host's own message types: plain std values, free of anything a plugin allocated.

use serde::{Deserialize, Serialize};

/// A message that arrived on a platform, as the host hands it to the SSE stream, routes and
/// the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    /// The platform id it arrived on.
    pub platform: String,
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
    /// Extra fields, a JSON object.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The generation of the instance that delivered it.
    pub generation: u64,
}

/// A message to send through a platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// The platform's address: channel, nick, topic...
    pub chat_id: String,
    /// The text.
    pub text: String,
    /// The id of a message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Extra fields, a JSON object.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Outbound {
    /// A message with no reply-to and no metadata.
    pub fn new(chat_id: impl Into<String>, text: impl Into<String>) -> Self {
        Outbound {
            chat_id: chat_id.into(),
            text: text.into(),
            reply_to: None,
            metadata: serde_json::Map::new(),
        }
    }
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
