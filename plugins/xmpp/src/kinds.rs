//! Messages of every kind in XMPP's own forms, both ways:
//!
//! | kind | XMPP |
//! |---|---|
//! | reply | `<reply id=.../>` (XEP-0461, `urn:xmpp:reply:0`) |
//! | thread | `<thread>` (RFC 6121) |
//! | edit | a new body with `<replace id=.../>` (XEP-0308, last message correction) |
//! | delete | `<retract id=.../>` (XEP-0424, `urn:xmpp:message-retract:1`) with a fallback body |
//! | reaction | `<reactions id=...>` (XEP-0444): the sender's whole set of reactions to a message |
//!
//! Messages are referred to by their `id` attribute (the id the sender gave), which is what
//! this adapter returns as a sent message's id and delivers as an inbound message's.
//! XEP-0444 sends a sender's whole set of reactions each time: outbound, the adapter keeps the
//! set it sent per message (so taking one back sends the others); inbound, it keeps each
//! sender's last set per message and delivers what changed, one reaction event per emoji added
//! or taken back. Both memories hold at most [`SETS_KEPT`] messages and are forgotten on a
//! reload or reconnect (a set then starts afresh).

use std::collections::{BTreeSet, HashMap};

use hermes_plugin_api::{InboundMessage, MessageKind, OutboundMessage};

use crate::xml::{Element, escape};

/// Reaction sets remembered, at most (then forgotten all at once).
pub(crate) const SETS_KEPT: usize = 4096;

/// Reaction sets by (chat, sender, message): ours outbound (sender empty), each sender's inbound.
#[derive(Default)]
pub(crate) struct ReactionSets(HashMap<(String, String, String), BTreeSet<String>>);

impl ReactionSets {
    /// The set after `emoji` is added (or taken back) by `sender` on `target`; the previous set.
    fn update(
        &mut self,
        key: (String, String, String),
        change: impl FnOnce(&mut BTreeSet<String>),
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        if self.0.len() >= SETS_KEPT && !self.0.contains_key(&key) {
            self.0.clear();
        }
        let set = self.0.entry(key).or_default();
        let before = set.clone();
        change(set);
        (before, set.clone())
    }
}

/// The stanza for `message` to `to` (a `chat` or `groupchat` message, `type_`) under `id`.
pub(crate) fn stanza(
    message: &OutboundMessage,
    to: &str,
    type_: &str,
    id: &str,
    ours: &mut ReactionSets,
) -> Result<String, String> {
    let target =
        || {
            message.target_id.as_deref().map(escape).ok_or_else(|| {
                format!("a {} needs the id of the message it is about", message.kind)
            })
        };
    let mut inner = String::new();
    match message.kind {
        MessageKind::Message => {
            if message.text.is_empty() {
                return Err("nothing to send: the text is empty".into());
            }
            inner.push_str(&format!(
                "<body>{}</body>",
                escape(&message.text_naming_author())
            ));
            if let Some(reply) = &message.reply_to {
                inner.push_str(&format!(
                    "<reply xmlns='urn:xmpp:reply:0' id='{}'/>",
                    escape(reply)
                ));
            }
        }
        MessageKind::Edit => {
            inner.push_str(&format!(
                "<body>{}</body><replace xmlns='urn:xmpp:message-correct:0' id='{}'/>",
                escape(&message.text_naming_author()),
                target()?
            ));
        }
        MessageKind::Delete => {
            inner.push_str(&format!(
                "<retract xmlns='urn:xmpp:message-retract:1' id='{}'/><fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/><body>(retracted a message)</body><store xmlns='urn:xmpp:hints'/>",
                target()?
            ));
        }
        MessageKind::Reaction => {
            let emoji = message.emoji.clone().ok_or("a reaction needs its emoji")?;
            let target_id = message.target_id.clone().unwrap_or_default();
            let (_, set) = ours.update((to.to_owned(), String::new(), target_id), |set| {
                if message.remove {
                    set.remove(&emoji);
                } else {
                    set.insert(emoji.clone());
                }
            });
            let reactions: String = set
                .iter()
                .map(|e| format!("<reaction>{}</reaction>", escape(e)))
                .collect();
            inner.push_str(&format!(
                "<reactions xmlns='urn:xmpp:reactions:0' id='{}'>{reactions}</reactions><store xmlns='urn:xmpp:hints'/>",
                target()?
            ));
        }
    }
    if let Some(thread) = &message.thread_id {
        inner.push_str(&format!("<thread>{}</thread>", escape(thread)));
    }
    Ok(format!(
        "<message to='{}' type='{type_}' id='{}'>{inner}</message>",
        escape(to),
        escape(id)
    ))
}

/// What `stanza` (from `user` in `chat`, with id `id`) says, as messages of their kinds: none
/// for a stanza that carries no message (a chat state, a receipt).
pub(crate) fn inbound(
    stanza: &Element,
    chat: &str,
    user: &str,
    id: &str,
    theirs: &mut ReactionSets,
) -> Vec<InboundMessage> {
    let new = |text: &str| InboundMessage::new(chat, user, text, id);
    let body = stanza.child("body").map(|b| b.text.as_str());
    let mut out = Vec::new();
    if let Some(reactions) = stanza.child("reactions")
        && let Some(target) = reactions.attr("id")
    {
        let now: BTreeSet<String> = reactions
            .children
            .iter()
            .filter(|c| c.local_name() == "reaction" && !c.text.is_empty())
            .map(|c| c.text.clone())
            .collect();
        let (before, now) = theirs.update(
            (chat.to_owned(), user.to_owned(), target.to_owned()),
            |set| *set = now,
        );
        for emoji in now.difference(&before) {
            let mut m = new("").about(MessageKind::Reaction, target);
            m.emoji = Some(emoji.clone());
            out.push(m);
        }
        for emoji in before.difference(&now) {
            let mut m = new("").about(MessageKind::Reaction, target);
            m.emoji = Some(emoji.clone());
            m.remove = true;
            out.push(m);
        }
        return out;
    }
    let retract = stanza.child("retract").or_else(|| {
        // The older form: <apply-to id=...><retract/></apply-to>.
        stanza
            .child("apply-to")
            .filter(|a| a.child("retract").is_some())
    });
    if let Some(target) = retract.and_then(|r| r.attr("id")) {
        out.push(new("").about(MessageKind::Delete, target));
        return out;
    }
    let Some(body) = body else {
        return out;
    };
    let mut message = match stanza.child("replace").and_then(|r| r.attr("id")) {
        Some(target) => new(body).about(MessageKind::Edit, target),
        None => new(body),
    };
    message.reply_to = stanza
        .child("reply")
        .and_then(|r| r.attr("id"))
        .map(str::to_owned);
    message.thread_id = stanza
        .child("thread")
        .map(|t| t.text.clone())
        .filter(|t| !t.is_empty());
    message
        .attachments
        .extend(crate::upload::oob_attachment(stanza));
    out.push(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Item, Stream};

    /// A stanza as another client writes it, parsed by the adapter's own reader.
    fn parse(stanza: &str) -> Element {
        let mut stream = Stream::default();
        stream.push(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
        stream.push(stanza.as_bytes());
        loop {
            match stream.next_item().unwrap() {
                Some(Item::Stanza(s)) => return s,
                Some(_) => {}
                None => panic!("no stanza in {stanza}"),
            }
        }
    }

    #[test]
    fn other_clients_stanzas_read_as_their_kinds() {
        let mut sets = ReactionSets::default();
        let mut read = |xml: &str| inbound(&parse(xml), "c", "u", "new", &mut sets);
        // XEP-0308's example 2.
        let m = read(
            "<message to='juliet@capulet.net/balcony' id='good1'><body>But soft, what light through yonder window breaks?</body><replace id='bad1' xmlns='urn:xmpp:message-correct:0'/></message>",
        );
        assert_eq!(
            (m[0].kind, m[0].target_id.as_deref()),
            (MessageKind::Edit, Some("bad1"))
        );
        // XEP-0444: a set of two, then one of them taken back.
        let m = read(
            "<message id='r1'><reactions id='744f6e18' xmlns='urn:xmpp:reactions:0'><reaction>👋</reaction><reaction>🐢</reaction></reactions></message>",
        );
        assert_eq!(m.len(), 2);
        let m = read(
            "<message id='r2'><reactions id='744f6e18' xmlns='urn:xmpp:reactions:0'><reaction>🐢</reaction></reactions></message>",
        );
        assert_eq!(
            (m.len(), m[0].emoji.as_deref(), m[0].remove),
            (1, Some("👋"), true)
        );
        // XEP-0424 and XEP-0461.
        let m = read(
            "<message id='d'><retract id='origin-id-1' xmlns='urn:xmpp:message-retract:1'/><body>fallback</body></message>",
        );
        assert_eq!(
            (m[0].kind, m[0].target_id.as_deref()),
            (MessageKind::Delete, Some("origin-id-1"))
        );
        let m = read(
            "<message id='x'><body>yes</body><reply to='anna@example.com/laptop' id='message-id1' xmlns='urn:xmpp:reply:0'/><thread>th</thread></message>",
        );
        assert_eq!(
            (m[0].reply_to.as_deref(), m[0].thread_id.as_deref()),
            (Some("message-id1"), Some("th"))
        );
        // A chat state without a body carries no message.
        assert!(
            read(
                "<message id='s'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            )
            .is_empty()
        );
    }
}
