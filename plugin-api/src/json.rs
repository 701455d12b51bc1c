//! The JSON form of a message, for adapters whose platform carries JSON (MQTT payloads,
//! webhooks): its kind and every field, absent ones left out.
//!
//! ```json
//! {"kind": "edit", "message_id": "out-7", "text": "fixed", "target_id": "out-3", "user": "ann",
//!  "reply_to": "out-1", "thread_id": "t", "emoji": "👍", "remove": true,
//!  "attachments": [{"name": "a.png", "mime": "image/png", "size": 5120, "url": "https://..."}],
//!  "idempotency_key": "k1"}
//! ```
//!
//! Attachments travel by URL: bytes are not put into JSON (their name, type and size are).

use serde::{Deserialize, Serialize};

use crate::{Attachment, InboundMessage, MessageKind, OutboundMessage, ROUTED_USER_KEY};

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

/// `message`, sent as `id`, in its JSON form; `user` is the routed author when a route
/// brought it.
pub fn outbound_to_json(message: &OutboundMessage, id: &str) -> serde_json::Value {
    let wire = Wire {
        kind: message.kind,
        message_id: Some(id.to_owned()),
        text: message.text.clone(),
        user: message
            .metadata
            .get(ROUTED_USER_KEY)
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
    serde_json::to_value(wire).unwrap_or_default()
}

/// The message a JSON object in `chat` stands for: `None` unless it is an object with a `text`
/// or a `kind` of the right types. `user` and `id` stand in for a missing `user` and
/// `message_id`.
pub fn inbound_from_json(
    value: serde_json::Value,
    chat: &str,
    user: &str,
    id: &str,
) -> Option<InboundMessage> {
    if value.get("text").is_none() && value.get("kind").is_none() {
        return None;
    }
    let wire: Wire = serde_json::from_value(value).ok()?;
    Some(InboundMessage {
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
            chat,
            wire.user.unwrap_or_else(|| user.to_owned()),
            wire.text,
            wire.message_id.unwrap_or_else(|| id.to_owned()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_itself() {
        let edit = OutboundMessage {
            kind: MessageKind::Edit,
            target_id: Some("out-1".into()),
            ..OutboundMessage::new("t", "fixed")
        };
        let json = outbound_to_json(&edit, "out-2");
        assert_eq!(
            json,
            serde_json::json!({ "kind": "edit", "message_id": "out-2", "text": "fixed", "target_id": "out-1" })
        );
        let read = inbound_from_json(json, "t", "u", "ignored").unwrap();
        assert_eq!(
            (
                read.kind,
                read.target_id.as_deref(),
                read.message_id.as_str(),
                read.user.as_str()
            ),
            (MessageKind::Edit, Some("out-1"), "out-2", "u")
        );
        assert!(inbound_from_json(serde_json::json!([1]), "t", "u", "i").is_none());
        assert!(inbound_from_json(serde_json::json!({ "text": 5 }), "t", "u", "i").is_none());
    }
}
