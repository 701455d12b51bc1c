//! What a publish carries: the text alone (`payload = "text"`, the default), or the message as
//! JSON with its kind and every field (`payload = "json"`, the form of
//! [`hermes_plugin_api::json`]), both ways. Inbound, in JSON mode, a payload that is a JSON
//! object with a `text` or a `kind` is read as such (its `message_id`, when given, is the
//! message's id, so publishers can refer to their own messages); anything else is a text
//! message. Attachments travel by URL only.

use hermes_plugin_api::{InboundMessage, MessageKind, OutboundMessage, json};
use serde::Deserialize;

/// `payload`: how a message becomes a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// The text alone; other kinds are refused.
    #[default]
    Text,
    /// The message as JSON, every kind.
    Json,
}

/// The bytes to publish for `message`, sent as `id`.
pub(crate) fn encode(
    message: &OutboundMessage,
    id: &str,
    payload: Payload,
) -> Result<Vec<u8>, String> {
    match payload {
        Payload::Text if message.kind != MessageKind::Message => Err(format!(
            "a {} cannot travel as plain text; set payload = \"json\" in the platform's table",
            message.kind
        )),
        Payload::Text => Ok(message.text.clone().into_bytes()),
        Payload::Json => Ok(json::outbound_to_json(message, id).to_string().into_bytes()),
    }
}

/// The message a publish on `topic` carries; `id` when it names none.
pub(crate) fn decode(bytes: &[u8], topic: &str, id: &str, payload: Payload) -> InboundMessage {
    let parsed = match payload {
        Payload::Json => serde_json::from_slice(bytes)
            .ok()
            .and_then(|v| json::inbound_from_json(v, topic, "mqtt", id)),
        Payload::Text => None,
    };
    parsed.unwrap_or_else(|| {
        InboundMessage::new(
            topic,
            "mqtt",
            String::from_utf8_lossy(bytes).into_owned(),
            id,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_payloads_carry_kinds() {
        let edit = OutboundMessage {
            kind: MessageKind::Edit,
            target_id: Some("mqtt-out-1".into()),
            ..OutboundMessage::new("t", "fixed")
        };
        assert!(
            encode(&edit, "x", Payload::Text)
                .unwrap_err()
                .contains("payload = \"json\"")
        );
        let bytes = encode(&edit, "mqtt-out-2", Payload::Json).unwrap();
        assert_eq!(
            decode(&bytes, "t", "i", Payload::Json).kind,
            MessageKind::Edit
        );
        // Not ours: plain text, in either mode.
        assert_eq!(decode(b"[1,2]", "t", "i", Payload::Json).text, "[1,2]");
        assert_eq!(
            decode(b"{\"text\":\"x\"}", "t", "i", Payload::Text).text,
            "{\"text\":\"x\"}"
        );
    }
}
