//! Messages of every kind in Matrix's own forms, both ways:
//!
//! | kind | Matrix |
//! |---|---|
//! | message | `m.room.message` (`m.text`; `m.notice`, `m.emote` inbound) |
//! | reply | `m.relates_to.m.in_reply_to` |
//! | thread | `m.relates_to` with `rel_type: m.thread` (and the reply fallback) |
//! | edit | `m.room.message` with `m.new_content` and `rel_type: m.replace` |
//! | delete | a redaction of the event |
//! | reaction | `m.reaction` with `rel_type: m.annotation` and the emoji as `key`; taken back by redacting our reaction event |
//! | attachment | uploaded to the media repository, then an `m.image`, `m.video`, `m.audio` or `m.file` event (after the text, when there is one); inbound, a download URL |

use hermes_plugin_api::{Attachment, InboundMessage, MessageKind, OutboundMessage};
use serde_json::{Value, json};

/// What a send asks of the homeserver.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    /// `PUT /rooms/{room}/send/{event_type}/{txn}`.
    Event {
        event_type: &'static str,
        content: Value,
    },
    /// `PUT /rooms/{room}/redact/{event_id}/{txn}`.
    Redact { event_id: String },
    /// A file: uploaded (its bytes) or linked (an `mxc://` URL), then an event naming it.
    File(Attachment),
}

/// The `msgtype` for a file of `mime`.
pub(crate) fn file_msgtype(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or_default() {
        "image" => "m.image",
        "video" => "m.video",
        "audio" => "m.audio",
        _ => "m.file",
    }
}

/// The event content for `file` stored at `mxc`.
pub(crate) fn file_content(file: &Attachment, mxc: &str) -> Value {
    json!({
        "msgtype": file_msgtype(&file.mime),
        "body": file.name,
        "url": mxc,
        "info": { "mimetype": file.mime, "size": file.size },
    })
}

/// The requests for `message`, in order (a text with files is the text's event, then one per
/// file); `own_reaction` finds the event of a reaction we sent (room, target, emoji), to take
/// it back.
pub(crate) fn outbound(
    message: &OutboundMessage,
    room: &str,
    own_reaction: impl Fn(&str, &str, &str) -> Option<String>,
) -> Result<Vec<Request>, String> {
    let first = first_request(message, room, own_reaction)?;
    let mut requests = Vec::with_capacity(1 + message.attachments.len());
    if !(message.kind == MessageKind::Message
        && message.text.is_empty()
        && !message.attachments.is_empty())
    {
        requests.push(first);
    }
    requests.extend(message.attachments.iter().cloned().map(Request::File));
    Ok(requests)
}

fn first_request(
    message: &OutboundMessage,
    room: &str,
    own_reaction: impl Fn(&str, &str, &str) -> Option<String>,
) -> Result<Request, String> {
    let target = || {
        message
            .target_id
            .clone()
            .ok_or_else(|| format!("a {} needs the id of the message it is about", message.kind))
    };
    Ok(match message.kind {
        MessageKind::Message => {
            let mut content = json!({ "msgtype": "m.text", "body": message.text_naming_author() });
            if let Some(html) = message
                .metadata
                .get("formatted_body")
                .and_then(Value::as_str)
            {
                content["format"] = "org.matrix.custom.html".into();
                content["formatted_body"] = html.into();
            }
            let reply = message.reply_to.as_deref();
            match (message.thread_id.as_deref(), reply) {
                (Some(thread), _) => {
                    content["m.relates_to"] = json!({
                        "rel_type": "m.thread",
                        "event_id": thread,
                        "is_falling_back": reply.is_none(),
                        "m.in_reply_to": { "event_id": reply.unwrap_or(thread) },
                    });
                }
                (None, Some(reply)) => {
                    content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": reply } });
                }
                (None, None) => {}
            }
            Request::Event {
                event_type: "m.room.message",
                content,
            }
        }
        MessageKind::Edit => {
            let text = message.text_naming_author();
            Request::Event {
                event_type: "m.room.message",
                content: json!({
                    "msgtype": "m.text",
                    "body": format!("* {text}"),
                    "m.new_content": { "msgtype": "m.text", "body": text },
                    "m.relates_to": { "rel_type": "m.replace", "event_id": target()? },
                }),
            }
        }
        MessageKind::Delete => Request::Redact {
            event_id: target()?,
        },
        MessageKind::Reaction => {
            let emoji = message.emoji.clone().ok_or("a reaction needs its emoji")?;
            let target = target()?;
            if message.remove {
                let event_id = own_reaction(room, &target, &emoji).ok_or_else(|| {
                    format!("no reaction {emoji} of ours on {target} to take back")
                })?;
                Request::Redact { event_id }
            } else {
                Request::Event {
                    event_type: "m.reaction",
                    content: json!({
                        "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": emoji },
                    }),
                }
            }
        }
    })
}

/// A timeline event as a message of its kind; `None` for what is not a message (state,
/// other types, unknown msgtypes, a malformed relation).
/// `download` turns an `mxc://` URI into a URL a client can fetch (with a token where the
/// homeserver requires authenticated media).
pub(crate) fn inbound(
    room_id: &str,
    event: &Value,
    download: impl Fn(&str) -> String,
) -> Option<InboundMessage> {
    let content = &event["content"];
    let relates = &content["m.relates_to"];
    let sender = event["sender"].as_str().unwrap_or_default();
    let event_id = event["event_id"].as_str().unwrap_or_default();
    let related = || relates["event_id"].as_str().map(str::to_owned);
    let mut message = match event["type"].as_str()? {
        "m.room.message" => {
            let msgtype = content["msgtype"].as_str()?;
            if matches!(msgtype, "m.image" | "m.video" | "m.audio" | "m.file") {
                let mxc = content["url"].as_str()?;
                let name = content["filename"]
                    .as_str()
                    .or_else(|| content["body"].as_str())
                    .unwrap_or("file");
                let mut message = InboundMessage::new(room_id, sender, "", event_id);
                message.attachments.push(Attachment {
                    name: name.to_owned(),
                    mime: content["info"]["mimetype"]
                        .as_str()
                        .unwrap_or("application/octet-stream")
                        .to_owned(),
                    size: content["info"]["size"].as_u64().unwrap_or(0),
                    data: Vec::new(),
                    url: Some(download(mxc)),
                });
                message.metadata.insert("mxc".into(), mxc.into());
                return Some(message);
            }
            if !matches!(msgtype, "m.text" | "m.notice" | "m.emote") {
                return None;
            }
            if relates["rel_type"] == "m.replace" {
                let text = content["m.new_content"]["body"]
                    .as_str()
                    .or_else(|| content["body"].as_str()?.strip_prefix("* "))?;
                InboundMessage::new(room_id, sender, text, event_id)
                    .about(MessageKind::Edit, related()?)
            } else {
                let mut message =
                    InboundMessage::new(room_id, sender, content["body"].as_str()?, event_id);
                let reply = relates["m.in_reply_to"]["event_id"].as_str();
                if relates["rel_type"] == "m.thread" {
                    message.thread_id = related();
                    if relates["is_falling_back"] != true {
                        message.reply_to = reply.map(str::to_owned);
                    }
                } else {
                    message.reply_to = reply.map(str::to_owned);
                }
                if let Some(html) = content["formatted_body"].as_str() {
                    message
                        .metadata
                        .insert("formatted_body".into(), html.into());
                }
                message
            }
        }
        "m.reaction" if relates["rel_type"] == "m.annotation" => {
            let mut message = InboundMessage::new(room_id, sender, "", event_id)
                .about(MessageKind::Reaction, related()?);
            message.emoji = Some(relates["key"].as_str()?.to_owned());
            message
        }
        "m.room.redaction" => {
            let target = event["redacts"]
                .as_str()
                .or_else(|| content["redacts"].as_str())?;
            InboundMessage::new(room_id, sender, "", event_id).about(MessageKind::Delete, target)
        }
        _ => return None,
    };
    if let Some(ts) = event["origin_server_ts"].as_i64() {
        message.timestamp_ms = ts;
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_back_as_itself() {
        let edit = OutboundMessage {
            kind: MessageKind::Edit,
            target_id: Some("$t".into()),
            ..OutboundMessage::new("!r", "fixed")
        };
        let Request::Event {
            event_type,
            content,
        } = outbound(&edit, "!r", |_, _, _| None).unwrap().remove(0)
        else {
            panic!("an edit is an event");
        };
        let event =
            json!({ "type": event_type, "content": content, "sender": "@a:x", "event_id": "$e" });
        let read = inbound("!r", &event, str::to_owned).unwrap();
        assert_eq!(
            (read.kind, read.target_id.as_deref(), read.text.as_str()),
            (MessageKind::Edit, Some("$t"), "fixed")
        );

        let reply = OutboundMessage {
            thread_id: Some("$root".into()),
            reply_to: Some("$r".into()),
            ..OutboundMessage::new("!r", "hi")
        };
        let Request::Event { content, .. } =
            outbound(&reply, "!r", |_, _, _| None).unwrap().remove(0)
        else {
            panic!()
        };
        let event = json!({ "type": "m.room.message", "content": content, "sender": "@a:x", "event_id": "$e" });
        let read = inbound("!r", &event, str::to_owned).unwrap();
        assert_eq!(
            (read.thread_id.as_deref(), read.reply_to.as_deref()),
            (Some("$root"), Some("$r"))
        );

        let unreact = OutboundMessage {
            kind: MessageKind::Reaction,
            target_id: Some("$t".into()),
            emoji: Some("👍".into()),
            remove: true,
            ..OutboundMessage::new("!r", "")
        };
        assert!(
            outbound(&unreact, "!r", |_, _, _| None)
                .unwrap_err()
                .contains("no reaction 👍 of ours")
        );
        assert_eq!(
            outbound(&unreact, "!r", |_, _, _| Some("$mine".into())).unwrap(),
            vec![Request::Redact {
                event_id: "$mine".into()
            }]
        );
    }
}
