//! Routing: which inbound messages go on to other platforms, and how loops are kept out.
//!
//! A route names a source chat (`platform/chat`) and targets. An inbound message on a source
//! chat becomes one [`RoutedSend`] per target; the gateway sends each in its own task, so a
//! failing or slow target never holds up the others. A routed send carries the metadata key
//! [`ROUTED_KEY`] (and [`ROUTED_USER_KEY`], the original author); a message that comes back
//! carrying it (loopback echoes metadata) is never routed again, and a target equal to the
//! source is skipped: no loops. A config reload swaps the whole table at once ([`Routes`]).
//!
//! Every kind travels: a routed message keeps its kind, thread, reply, target, emoji and files,
//! and the ids among them (the message an edit, delete or reaction is about, the message
//! replied to, the thread) are those of the source platform until the gateway maps them to the
//! target's through the store's message map ([`crate::store`]), just before the send.

use std::sync::{Arc, RwLock};

use crate::{
    config::Route,
    message::{Inbound, Outbound},
    store::MessageRef,
};

/// The metadata key a routed send carries: `platform/chat` of the source.
pub(crate) const ROUTED_KEY: &str = "hermes_routed_from";

/// The metadata key with the source message's author (the plugin API's, which adapters read).
pub(crate) use hermes_plugin_api::ROUTED_USER_KEY;

/// The routes in force, swapped whole by a config reload.
pub struct Routes(RwLock<Arc<Vec<Route>>>);

impl Routes {
    /// The table `routes`.
    pub fn new(routes: Vec<Route>) -> Self {
        Routes(RwLock::new(Arc::new(routes)))
    }

    /// The table in force; a reload never changes it under the caller.
    pub fn current(&self) -> Arc<Vec<Route>> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `routes` in force for every message dispatched from now on.
    pub fn replace(&self, routes: Vec<Route>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }
}

/// One send a route asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoutedSend {
    /// The target platform.
    pub platform: String,
    /// The message, addressed to the target chat and marked as routed.
    pub message: Outbound,
    /// `platform/chat` of the source.
    pub source: String,
    /// The source message itself: its copy is recorded in the message map once sent.
    pub origin: MessageRef,
}

/// The sends that `routes` ask for when `message` arrives; none for a routed message.
pub(crate) fn plan(routes: &[Route], message: &Inbound) -> Vec<RoutedSend> {
    if message.metadata.contains_key(ROUTED_KEY) {
        return Vec::new();
    }
    let source = format!("{}/{}", message.platform, message.chat_id);
    routes
        .iter()
        .filter(|r| r.from.platform == message.platform && r.from.chat == message.chat_id)
        .flat_map(|r| &r.to)
        .filter(|t| !(t.platform == message.platform && t.chat == message.chat_id))
        .map(|target| {
            let mut out = Outbound {
                kind: message.kind,
                chat_id: target.chat.clone(),
                text: message.text.clone(),
                reply_to: message.reply_to.clone(),
                thread_id: message.thread_id.clone(),
                target_id: message.target_id.clone(),
                emoji: message.emoji.clone(),
                remove: message.remove,
                attachments: message.attachments.clone(),
                ..Outbound::default()
            };
            out.metadata
                .insert(ROUTED_KEY.into(), source.clone().into());
            out.metadata
                .insert(ROUTED_USER_KEY.into(), message.user.clone().into());
            RoutedSend {
                platform: target.platform.clone(),
                message: out,
                source: source.clone(),
                origin: MessageRef {
                    platform: message.platform.clone(),
                    chat: message.chat_id.clone(),
                    id: message.message_id.clone(),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Endpoint;

    fn end(platform: &str, chat: &str) -> Endpoint {
        Endpoint {
            platform: platform.into(),
            chat: chat.into(),
        }
    }

    fn inbound(platform: &str, chat: &str) -> Inbound {
        Inbound {
            platform: platform.into(),
            chat_id: chat.into(),
            user: "ann".into(),
            text: "hi".into(),
            message_id: "1".into(),
            timestamp: 0,
            generation: 1,
            ..Inbound::default()
        }
    }

    #[test]
    fn a_source_chat_fans_out_to_its_targets_but_not_to_itself() {
        let routes = [Route {
            from: end("irc", "#a"),
            to: vec![end("mqtt", "t/1"), end("irc", "#a"), end("webhook", "x")],
        }];
        let sends = plan(&routes, &inbound("irc", "#a"));
        let targets: Vec<_> = sends.iter().map(|s| s.platform.as_str()).collect();
        assert_eq!(targets, ["mqtt", "webhook"]);
        assert_eq!(sends[0].message.chat_id, "t/1");
        assert_eq!(sends[0].message.metadata[ROUTED_KEY], "irc/#a");
        assert_eq!(sends[0].message.metadata[ROUTED_USER_KEY], "ann");
        assert!(plan(&routes, &inbound("irc", "#b")).is_empty());
    }

    #[test]
    fn a_routed_message_is_never_routed_again() {
        let routes = [Route {
            from: end("loopback", "a"),
            to: vec![end("loopback", "b")],
        }];
        let mut echoed = inbound("loopback", "a");
        echoed
            .metadata
            .insert(ROUTED_KEY.into(), "loopback/b".into());
        assert!(plan(&routes, &echoed).is_empty());
    }
}
