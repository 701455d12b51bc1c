//! What a platform can carry, as its manifest declares it (`[capabilities]`, read without
//! loading anything), and how the gateway fits a message to it: a long text split into parts,
//! and what the platform lacks refused with a 422 naming it, or sent as text where the
//! platform's table sets `fallback = "text"`.
//!
//! ```toml
//! [capabilities]
//! max_text_len = 400          # bytes; longer texts are split by the host, in order
//! edit = true
//! delete = true
//! reactions = true
//! replies = true
//! threads = false
//! attachments = { max_bytes = 10485760, mime = ["image/*", "text/plain"] }   # omit: none
//! ```
//!
//! A manifest without the table declares nothing beyond text messages. `reply_to` is carried
//! either way (level 1.0 carried it): `replies` says the platform shows a reply as one.
//! A plugin built for level 1.0 carries text messages only, whatever its manifest says.

use serde::{Deserialize, Serialize};

use crate::message::{MessageKind, Outbound};

/// `[capabilities]` of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Longer texts are split by the host into parts of at most this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_text_len: Option<usize>,
    /// Edits of sent messages.
    #[serde(default)]
    pub edit: bool,
    /// Deletes of sent messages.
    #[serde(default)]
    pub delete: bool,
    /// Reactions.
    #[serde(default)]
    pub reactions: bool,
    /// Replies shown as such.
    #[serde(default)]
    pub replies: bool,
    /// Threads.
    #[serde(default)]
    pub threads: bool,
    /// Files, up to a size and of some types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<AttachmentCapability>,
    /// Inbound message ids are the platform's own: unique in a chat, and the same when the
    /// platform delivers a message again (after a reconnect, from a sync position that was not
    /// saved). The gateway keeps the ids it delivered and drops such a redelivery.
    #[serde(default)]
    pub unique_ids: bool,
}

/// `[capabilities] attachments`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentCapability {
    /// The largest file, in bytes.
    pub max_bytes: u64,
    /// MIME types it takes (`image/*` matches every image); empty: any.
    #[serde(default)]
    pub mime: Vec<String>,
}

/// `[platforms.<id>] fallback`: what becomes of a message the platform cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Refused with 422, naming what the platform lacks (the default).
    #[default]
    Refuse,
    /// Sent as a plain message saying it.
    Text,
}

/// Why a message cannot go to a platform as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "platform `{platform}` {lacks}; set `fallback = \"text\"` in [platforms.{platform}] to send it as text"
)]
pub struct Unsupported {
    /// The platform.
    pub platform: String,
    /// What it lacks, as words: "cannot edit messages (...)".
    pub lacks: String,
}

impl AttachmentCapability {
    fn takes(&self, mime: &str) -> bool {
        self.mime.is_empty()
            || self.mime.iter().any(|m| match m.strip_suffix("/*") {
                Some(family) => mime
                    .split_once('/')
                    .is_some_and(|(f, _)| f.eq_ignore_ascii_case(family)),
                None => m.eq_ignore_ascii_case(mime),
            })
    }
}

impl Capabilities {
    /// `message` as the parts to send through `platform`, whose plugin is of API `level`
    /// (0 for 1.0): split under `max_text_len`, and what the platform lacks refused or (with
    /// `fallback = "text"`) turned into text.
    pub fn fit(
        &self,
        platform: &str,
        level: u32,
        fallback: Fallback,
        mut message: Outbound,
    ) -> Result<Vec<Outbound>, Unsupported> {
        let lacks = self.lacks(level, &message);
        if let Some(lacks) = lacks {
            if fallback == Fallback::Refuse {
                return Err(Unsupported {
                    platform: platform.to_owned(),
                    lacks,
                });
            }
            message = self.as_text(level, message);
        }
        Ok(match self.max_text_len {
            Some(max) if message.kind == MessageKind::Message && message.text.len() > max => {
                split_text(&message.text, max)
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| Outbound {
                        text,
                        // The reply and the files go with the first part.
                        reply_to: if i == 0 {
                            message.reply_to.clone()
                        } else {
                            None
                        },
                        attachments: if i == 0 {
                            message.attachments.clone()
                        } else {
                            Vec::new()
                        },
                        idempotency_key: message.idempotency_key.as_ref().map(|k| {
                            if i == 0 {
                                k.clone()
                            } else {
                                format!("{k}#{i}")
                            }
                        }),
                        ..message.clone()
                    })
                    .collect()
            }
            _ => vec![message],
        })
    }

    /// What `message` needs that the platform (or its plugin's level) lacks, in words.
    fn lacks(&self, level: u32, message: &Outbound) -> Option<String> {
        if level == 0 && !message.is_level_1_0() {
            return Some(
                "runs a plugin built for plugin API level 1.0, which carries text messages only (no edits, deletes, reactions, threads or attachments)"
                    .to_owned(),
            );
        }
        let kind = match message.kind {
            MessageKind::Edit if !self.edit => Some("edit messages"),
            MessageKind::Delete if !self.delete => Some("delete messages"),
            MessageKind::Reaction if !self.reactions => Some("carry reactions"),
            _ => None,
        };
        if let Some(what) = kind {
            let key = match message.kind {
                MessageKind::Reaction => "reactions",
                other => other.as_str(),
            };
            return Some(format!(
                "cannot {what} (its manifest's [capabilities] has no `{key} = true`)"
            ));
        }
        if message.thread_id.is_some() && !self.threads {
            return Some(
                "has no threads (its manifest's [capabilities] has no `threads = true`)".into(),
            );
        }
        if message.kind == MessageKind::Edit
            && let Some(max) = self.max_text_len
            && message.text.len() > max
        {
            return Some(format!(
                "takes texts of at most {max} bytes (`max_text_len`), and an edit cannot be split; this one is {}",
                message.text.len()
            ));
        }
        if message.attachments.is_empty() {
            return None;
        }
        let Some(files) = &self.attachments else {
            return Some(
                "takes no attachments (its manifest's [capabilities] has no `attachments`)".into(),
            );
        };
        message.attachments.iter().find_map(|a| {
            if a.size > files.max_bytes {
                Some(format!(
                    "takes attachments of at most {} bytes; `{}` is {}",
                    files.max_bytes, a.name, a.size
                ))
            } else if !files.takes(&a.mime) {
                Some(format!(
                    "takes attachments of type {}; `{}` is {}",
                    files.mime.join(", "),
                    a.name,
                    a.mime
                ))
            } else {
                None
            }
        })
    }

    /// `message` as a plain text message saying what it was: an edit as a correction quoting
    /// the new text, a delete as a note, a reaction as `reacted 👍` (adapters prefix the
    /// routed author); a thread it cannot show is left out; files it cannot take are named
    /// (with their URL when they have one).
    fn as_text(&self, level: u32, message: Outbound) -> Outbound {
        let text = match message.kind {
            MessageKind::Message => message.text.clone(),
            MessageKind::Edit => format!("Correction: {}", message.text),
            MessageKind::Delete => "(deleted a message)".to_owned(),
            MessageKind::Reaction => {
                let emoji = message.emoji.as_deref().unwrap_or("?");
                if message.remove {
                    format!("took back {emoji}")
                } else {
                    format!("reacted {emoji}")
                }
            }
        };
        let threads = level > 0 && self.threads;
        let (kept, named): (Vec<_>, Vec<_>) = message.attachments.into_iter().partition(|a| {
            level > 0
                && self
                    .attachments
                    .as_ref()
                    .is_some_and(|f| a.size <= f.max_bytes && f.takes(&a.mime))
        });
        let mut text = text;
        for a in named {
            text.push_str(&match &a.url {
                Some(url) => format!("\n[{}: {url}]", a.name),
                None => format!("\n[{} ({}, {} bytes) not carried]", a.name, a.mime, a.size),
            });
        }
        Outbound {
            kind: MessageKind::Message,
            text,
            target_id: None,
            emoji: None,
            remove: false,
            thread_id: message.thread_id.filter(|_| threads),
            attachments: kept,
            ..message
        }
    }
}

/// `text` in parts of at most `max` bytes, in order: cut at the last line break within the
/// bound, else the last space, else the last character boundary (a part never splits a
/// character). The break itself is dropped; no part is empty.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let window = &rest[..end];
        let (cut, skip) = match window.rfind('\n').or_else(|| window.rfind(' ')) {
            Some(at) if at > 0 => (at, 1),
            _ => (end, 0),
        };
        parts.push(rest[..cut].trim_end_matches('\r').to_owned());
        rest = &rest[cut + skip..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_lines_then_words_then_characters() {
        assert_eq!(split_text("short", 10), ["short"]);
        assert_eq!(
            split_text("one two three four", 9),
            ["one two", "three", "four"]
        );
        assert_eq!(
            split_text("line one\nline two", 12),
            ["line one", "line two"]
        );
        let parts = split_text(&"é".repeat(10), 5);
        assert!(
            parts.iter().all(|p| p.len() <= 5 && !p.is_empty()),
            "{parts:?}"
        );
        assert_eq!(parts.concat(), "é".repeat(10));
        let text = "word ".repeat(1000);
        let parts = split_text(&text, 400);
        assert!(parts.iter().all(|p| p.len() <= 400));
        assert_eq!(parts.join(" ").split_whitespace().count(), 1000);
    }

    #[test]
    fn what_a_platform_lacks_is_refused_or_sent_as_text() {
        let caps = Capabilities::default();
        let edit = Outbound {
            kind: MessageKind::Edit,
            target_id: Some("m1".into()),
            ..Outbound::new("c", "fixed")
        };
        let e = caps
            .fit("irc", 1, Fallback::Refuse, edit.clone())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("platform `irc` cannot edit messages"),
            "{e}"
        );
        let sent = caps.fit("irc", 1, Fallback::Text, edit).unwrap();
        assert_eq!(sent[0].kind, MessageKind::Message);
        assert_eq!(sent[0].text, "Correction: fixed");
        let react = Outbound {
            kind: MessageKind::Reaction,
            target_id: Some("m1".into()),
            emoji: Some("👍".into()),
            ..Outbound::new("c", "")
        };
        assert_eq!(
            caps.fit("irc", 1, Fallback::Text, react).unwrap()[0].text,
            "reacted 👍"
        );
        // A level-1.0 plugin carries text only, whatever the manifest declares.
        let all = Capabilities {
            edit: true,
            ..Capabilities::default()
        };
        let edit = Outbound {
            kind: MessageKind::Edit,
            ..Outbound::new("c", "x")
        };
        let e = all.fit("lb", 0, Fallback::Refuse, edit).unwrap_err();
        assert!(e.to_string().contains("plugin API level 1.0"), "{e}");
    }
}
