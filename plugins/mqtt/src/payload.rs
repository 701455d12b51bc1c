//! What a publish carries: the text alone (`payload = "text"`, the default), or the message as
//! JSON with its kind and every field (`payload = "json"`), both ways:
//!
//! ```json
//! {"kind": "edit", "message_id": "mqtt-out-7", "text": "fixed", "target_id": "mqtt-out-3",
//!  "user": "ann", "reply_to": null, "thread_id": null, "emoji": null, "remove": false,
//!  "attachments": [{"name": "a.png", "mime": "image/png", "size": 5120, "url": "https://..."}],
//!  "idempotency_key": "k1"}
//! ```
//!
//! Absent fields are left out. Inbound, in JSON mode, a payload that is a JSON object with a
//! `text` or a `kind` is read as such (its `message_id`, when given, is the message's id, so
//! publishers can refer to their own messages); anything else is a text message. Attachments
//! travel by URL only: bytes are named, not published.

use hermes_plugin_api::{Attachment, InboundMessage, MessageKind, OutboundMessage};
use serde::{Deserialize, Serialize};

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

#[derive(Serialize, Deserialize, Default)]
struct Wire {
    #[serde(default)]
    kind: MessageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(default)]
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emoji: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    remove: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<WireAttachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireAttachment {
    name: String,
    #[serde(default)]
    mime: String,
    #[serde(default)]
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// The bytes to publish for `message`, sent as `id`.
pub(crate) fn encode(
    message: &OutboundMessage,
    id: &str,
    payload: Payload,
) -> Result<Vec<u8>, String> {
    if payload == Payload::Text {
        if message.kind != MessageKind::Message {
            return Err(format!(
                "a {} cannot travel as plain text; set payload = \"json\" in the platform's table",
                message.kind
            ));
        }
        return Ok(message.text.clone().into_bytes());
    }
    let wire = Wire {
        kind: message.kind,
        message_id: Some(id.to_owned()),
        text: message.text.clone(),
        user: message
            .metadata
            .get(hermes_plugin_api::ROUTED_USER_KEY)
            .and_then(|u| u.as_str())
            .map(str::to_owned),
        reply_to: message.reply_to.clone(),
        thread_id: message.thread_id.clone(),
        target_id: message.target_id.clone(),
        emoji: message.emoji.clone(),
        remove: message.remove,
        attachments: message
            .attachments
            .iter()
            .map(|a| WireAttachment {
                name: a.name.clone(),
                mime: a.mime.clone(),
                size: a.size,
                url: a.url.clone(),
            })
            .collect(),
        idempotency_key: message.idempotency_key.clone(),
    };
    serde_json::to_vec(&wire).map_err(|e| e.to_string())
}

/// The message a publish on `topic` carries; `id` when it names none.
pub(crate) fn decode(bytes: &[u8], topic: &str, id: String, payload: Payload) -> InboundMessage {
    let text = || String::from_utf8_lossy(bytes).into_owned();
    let wire = match payload {
        Payload::Json => serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .filter(|v| v.get("text").is_some() || v.get("kind").is_some())
            .and_then(|v| serde_json::from_value::<Wire>(v).ok()),
        Payload::Text => None,
    };
    let Some(wire) = wire else {
        return InboundMessage::new(topic, "mqtt", text(), id);
    };
    InboundMessage {
        kind: wire.kind,
        reply_to: wire.reply_to,
        thread_id: wire.thread_id,
        target_id: wire.target_id,
        emoji: wire.emoji,
        remove: wire.remove,
        attachments: wire
            .attachments
            .into_iter()
            .map(|a| Attachment {
                name: a.name,
                mime: a.mime,
                size: a.size,
                data: Vec::new(),
                url: a.url,
            })
            .collect(),
        ..InboundMessage::new(
            topic,
            wire.user.unwrap_or_else(|| "mqtt".into()),
            wire.text,
            wire.message_id.unwrap_or(id),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_payload_carries_every_kind_both_ways() {
        let edit = OutboundMessage {
            kind: MessageKind::Edit,
            target_id: Some("mqtt-out-1".into()),
            ..OutboundMessage::new("t", "fixed")
        };
        let bytes = encode(&edit, "mqtt-out-2", Payload::Json).unwrap();
        let read = decode(&bytes, "t", "ignored".into(), Payload::Json);
        assert_eq!(
            (
                read.kind,
                read.target_id.as_deref(),
                read.message_id.as_str()
            ),
            (MessageKind::Edit, Some("mqtt-out-1"), "mqtt-out-2")
        );
        assert!(
            encode(&edit, "x", Payload::Text)
                .unwrap_err()
                .contains("payload = \"json\"")
        );
        // Not ours: plain text, in either mode.
        assert_eq!(
            decode(b"[1,2]", "t", "i".into(), Payload::Json).text,
            "[1,2]"
        );
        assert_eq!(
            decode(b"{\"text\":\"x\"}", "t", "i".into(), Payload::Text).text,
            "{\"text\":\"x\"}"
        );
    }
}
