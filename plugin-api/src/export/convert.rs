//! Level-1.0 and level-1.1 messages as the plugin sees them ([`OutboundMessage`]), and back.

use abi_stable::std_types::{ROption, RSlice, RStr};

use crate::{
    abi::{AttachmentFfi, KindFfi, OutboundFfi, OutboundV1_1},
    plugin::{Attachment, MessageKind, OutboundMessage},
};

fn string(s: RStr<'_>) -> String {
    s.as_str().to_owned()
}

fn optional(s: ROption<RStr<'_>>) -> Option<String> {
    s.into_option().map(string)
}

fn metadata(json: RStr<'_>) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(json.as_str()) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// A level-1.0 host's message: text, and nothing of level 1.1.
pub(crate) fn outbound_v1_0(message: &OutboundFfi<'_>) -> OutboundMessage {
    OutboundMessage {
        chat_id: string(message.chat_id),
        text: string(message.text),
        reply_to: optional(message.reply_to),
        metadata: metadata(message.metadata_json),
        ..OutboundMessage::default()
    }
}

pub(crate) fn outbound_v1_1(message: &OutboundV1_1<'_>) -> OutboundMessage {
    let more = &message.more;
    OutboundMessage {
        kind: MessageKind::from_ffi(more.kind),
        thread_id: optional(more.thread_id),
        target_id: optional(more.target_id),
        emoji: optional(more.emoji),
        remove: more.remove,
        attachments: more.attachments.iter().map(attachment_from_ffi).collect(),
        idempotency_key: optional(message.idempotency_key),
        ..outbound_v1_0(&message.base)
    }
}

pub(crate) fn attachment_from_ffi(a: &AttachmentFfi<'_>) -> Attachment {
    Attachment {
        name: string(a.name),
        mime: string(a.mime),
        size: a.size,
        data: a.data.to_vec(),
        url: optional(a.url),
    }
}

pub(crate) fn attachment_to_ffi(a: &Attachment) -> AttachmentFfi<'_> {
    AttachmentFfi {
        name: RStr::from_str(&a.name),
        mime: RStr::from_str(&a.mime),
        size: a.size,
        data: RSlice::from_slice(&a.data),
        url: a.url.as_deref().map(RStr::from_str).into(),
    }
}

/// The level-1.1 part of a message, borrowing from `attachments`.
pub(crate) fn kind_to_ffi_parts<'a>(
    kind: MessageKind,
    remove: bool,
    thread_id: Option<&'a str>,
    target_id: Option<&'a str>,
    emoji: Option<&'a str>,
    attachments: &'a [AttachmentFfi<'a>],
) -> KindFfi<'a> {
    KindFfi {
        kind: kind.to_ffi(),
        remove,
        thread_id: thread_id.map(RStr::from_str).into(),
        target_id: target_id.map(RStr::from_str).into(),
        emoji: emoji.map(RStr::from_str).into(),
        attachments: RSlice::from_slice(attachments),
    }
}

/// What a host receives of a level-1.0 delivery (the testing harness is such a host).
#[cfg(feature = "testing")]
pub(crate) fn inbound_v1_0(message: &crate::abi::InboundFfi<'_>) -> crate::InboundMessage {
    crate::InboundMessage {
        chat_id: string(message.chat_id),
        user: string(message.user),
        text: string(message.text),
        message_id: string(message.message_id),
        timestamp_ms: message.timestamp_ms,
        metadata: metadata(message.metadata_json),
        ..crate::InboundMessage::default()
    }
}

/// What a host receives of a level-1.1 delivery.
#[cfg(feature = "testing")]
pub(crate) fn inbound_v1_1(message: &crate::abi::InboundV1_1<'_>) -> crate::InboundMessage {
    let more = &message.more;
    crate::InboundMessage {
        kind: MessageKind::from_ffi(more.kind),
        reply_to: optional(message.reply_to),
        thread_id: optional(more.thread_id),
        target_id: optional(more.target_id),
        emoji: optional(more.emoji),
        remove: more.remove,
        attachments: more.attachments.iter().map(attachment_from_ffi).collect(),
        ..inbound_v1_0(&message.base)
    }
}
