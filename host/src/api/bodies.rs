//! The JSON bodies of `send`, `edit`, `delete` and `react`, each parsed into the one
//! [`Outbound`] the gateway sends, with the field at fault named in a 422.

use axum::http::StatusCode;
use serde::{Deserialize, de::DeserializeOwned};

use super::ApiError;
use crate::message::{
    Attachment, MessageKind, Outbound,
    limits::{ATTACHMENTS, INBOUND_FIELD_BYTES, METADATA_BYTES},
};

type Metadata = serde_json::Map<String, serde_json::Value>;

/// `POST /api/platforms/{id}/send`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    chat_id: String,
    text: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    metadata: Metadata,
}

/// `POST /api/platforms/{id}/edit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    chat_id: String,
    message_id: String,
    text: String,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

/// `POST /api/platforms/{id}/delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    chat_id: String,
    message_id: String,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

/// `POST /api/platforms/{id}/react`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactBody {
    chat_id: String,
    message_id: String,
    emoji: String,
    #[serde(default)]
    remove: bool,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

fn unprocessable(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// Parses `body` as `T`, naming the field at fault (a missing, unknown or mistyped one) or
/// where the JSON breaks.
fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
        if inner.is_syntax() || inner.is_eof() {
            unprocessable(format!(
                "invalid {what} body: not JSON (line {}, column {}): {text}",
                inner.line(),
                inner.column()
            ))
        } else if path == "." {
            unprocessable(format!("invalid {what} body: {text}"))
        } else {
            unprocessable(format!("invalid {what} body: field `{path}`: {text}"))
        }
    })
}

/// The body of a `send`, `edit`, `delete` or `react` (`kind`) as the message to send.
pub(crate) fn parse_message(kind: MessageKind, body: &[u8]) -> Result<Outbound, ApiError> {
    let mut message = match kind {
        MessageKind::Message => {
            let b: SendBody = parse(body, "send")?;
            Outbound {
                chat_id: b.chat_id,
                text: b.text,
                reply_to: b.reply_to,
                thread_id: b.thread_id,
                attachments: b.attachments,
                metadata: b.metadata,
                ..Outbound::default()
            }
        }
        MessageKind::Edit => {
            let b: EditBody = parse(body, "edit")?;
            Outbound {
                kind,
                chat_id: b.chat_id,
                text: b.text,
                target_id: Some(b.message_id),
                thread_id: b.thread_id,
                metadata: b.metadata,
                ..Outbound::default()
            }
        }
        MessageKind::Delete => {
            let b: DeleteBody = parse(body, "delete")?;
            Outbound {
                kind,
                chat_id: b.chat_id,
                target_id: Some(b.message_id),
                thread_id: b.thread_id,
                metadata: b.metadata,
                ..Outbound::default()
            }
        }
        MessageKind::Reaction => {
            let b: ReactBody = parse(body, "react")?;
            Outbound {
                kind,
                chat_id: b.chat_id,
                target_id: Some(b.message_id),
                emoji: Some(b.emoji),
                remove: b.remove,
                thread_id: b.thread_id,
                metadata: b.metadata,
                ..Outbound::default()
            }
        }
    };
    check_bounds(&message)?;
    for a in &mut message.attachments {
        if !a.data.is_empty() {
            a.size = a.data.len() as u64;
        }
    }
    Ok(message)
}

/// The bounds the gateway holds inbound messages to: an id past them names nothing anywhere,
/// and an echo of it could never come back in (a retry would not help).
fn check_bounds(message: &Outbound) -> Result<(), ApiError> {
    if message.chat_id.trim().is_empty() {
        return Err(unprocessable(
            "field `chat_id` must not be empty".to_owned(),
        ));
    }
    if message
        .emoji
        .as_deref()
        .is_some_and(|e| e.trim().is_empty())
    {
        return Err(unprocessable("field `emoji` must not be empty".to_owned()));
    }
    for (field, value) in [
        ("chat_id", Some(&message.chat_id)),
        ("reply_to", message.reply_to.as_ref()),
        ("thread_id", message.thread_id.as_ref()),
        ("message_id", message.target_id.as_ref()),
        ("emoji", message.emoji.as_ref()),
    ] {
        let len = value.map_or(0, String::len);
        if len > INBOUND_FIELD_BYTES {
            return Err(unprocessable(format!(
                "field `{field}` is {len} bytes; at most {INBOUND_FIELD_BYTES}"
            )));
        }
    }
    let metadata = serde_json::to_string(&message.metadata).map_or(0, |m| m.len());
    if metadata > METADATA_BYTES {
        return Err(unprocessable(format!(
            "field `metadata` is {metadata} bytes as JSON; at most {METADATA_BYTES}"
        )));
    }
    if message.attachments.len() > ATTACHMENTS {
        return Err(unprocessable(format!(
            "field `attachments` has {} entries; at most {ATTACHMENTS}",
            message.attachments.len()
        )));
    }
    for (i, a) in message.attachments.iter().enumerate() {
        if a.data.is_empty() == a.url.is_none() {
            return Err(unprocessable(format!(
                "field `attachments[{i}]`: give `data_base64` or `url`, one of the two"
            )));
        }
        if !a.data.is_empty() && a.size != 0 && a.size != a.data.len() as u64 {
            return Err(unprocessable(format!(
                "field `attachments[{i}].size` is {} but `data_base64` holds {} bytes",
                a.size,
                a.data.len()
            )));
        }
        if a.name.len() > INBOUND_FIELD_BYTES
            || a.mime.len() > INBOUND_FIELD_BYTES
            || a.url
                .as_ref()
                .is_some_and(|u| u.len() > INBOUND_FIELD_BYTES)
        {
            return Err(unprocessable(format!(
                "field `attachments[{i}]`: name, mime and url are at most {INBOUND_FIELD_BYTES} bytes each"
            )));
        }
    }
    Ok(())
}
