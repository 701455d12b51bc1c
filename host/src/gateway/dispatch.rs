//! Inbound dispatch: a message a plugin delivers goes to the journal, the SSE subscribers and
//! the routes, on the plugin's own thread and without blocking it, when the platform admits its
//! sender (`allowed_users`, see [`crate::config::Senders`]); otherwise it is dropped and counted.

use std::sync::{Arc, OnceLock, Weak};

use super::Gateway;
use crate::{
    journal::{Durability, Record, RecordKind},
    loader::EventSink,
    message::Inbound,
};

/// Takes inbound messages on plugin threads and dispatches them without blocking.
pub struct GatewaySink {
    pub(super) gateway: Arc<OnceLock<Weak<Gateway>>>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl EventSink for GatewaySink {
    fn inbound(&self, message: Inbound) -> Result<(), String> {
        match self.gateway.get().and_then(Weak::upgrade) {
            Some(gateway) => dispatch(&gateway, message, &self.runtime),
            None => Err("the gateway is shutting down".into()),
        }
    }

    fn stale_delivery(&self, platform: &str, generation: u64) {
        if let Some(gateway) = self.gateway.get().and_then(Weak::upgrade) {
            gateway.metrics.stale_delivery(platform);
        }
        tracing::debug!(
            platform,
            generation,
            "refused a delivery from a generation that no longer serves"
        );
    }

    fn crashed(&self, platform: &str, _generation: u64, _exit: &str) {
        if let Some(gateway) = self.gateway.get().and_then(Weak::upgrade) {
            gateway.metrics.crash(platform);
            gateway.crashes.notify_one();
        }
    }
}

/// Hands an inbound message to the journal, the routes (their target chats' lanes, see
/// [`super::lanes`]) and the SSE stream. Runs on the plugin's thread: everything here queues
/// and returns at once, except that with
/// `fsync` durability the record is on disk first, and a message the journal could not keep is
/// refused (the plugin sees the error) before anything else sees it.
fn dispatch(
    gateway: &Arc<Gateway>,
    message: Inbound,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    if let Ok(entry) = gateway.registry.entry(&message.platform)
        && !entry.admits(&message.user)
    {
        // Not delivered anywhere; the first refusal of a platform says how to admit senders.
        let refused = gateway.metrics.inbound_refused(&message.platform);
        if refused == 1 {
            tracing::warn!(
                platform = %message.platform,
                user = %message.user,
                "refused a message from a sender the platform does not admit; set allowed_users (or allow_all_users = true) in [platforms.{}] to deliver them; further refusals are counted in hermes_inbound_refused_total",
                message.platform
            );
        } else {
            tracing::debug!(platform = %message.platform, user = %message.user, "refused a message from a sender the platform does not admit");
        }
        return Ok(());
    }
    if redelivered(gateway, &message) {
        return Ok(());
    }
    gateway.touch(&message.platform);
    gateway.metrics.inbound(&message.platform);
    let kept = gateway.journal.record(Record {
        ts: message.timestamp,
        kind: RecordKind::Inbound,
        platform: message.platform.clone(),
        chat_id: message.chat_id.clone(),
        user: Some(message.user.clone()),
        text: message.text.clone(),
        message_id: message.message_id.clone(),
        generation: message.generation,
        route_from: None,
    });
    if gateway.journal.durability() == Durability::Fsync {
        kept.and_then(|ticket| gateway.journal.committed_blocking(ticket))
            .map_err(|e| format!("not accepted: {e}"))?;
    }
    let sends = crate::routing::plan(&gateway.routes.current(), &message);
    // SSE first: a routed copy must never reach subscribers before its source message.
    gateway.events.publish(&message);
    for send in sends {
        let (to, chat) = (send.platform.clone(), send.message.chat_id.clone());
        if !gateway.lanes.push(gateway, send, runtime) {
            gateway.metrics.routed("dropped");
            tracing::warn!(from = %message.platform, %to, %chat, "a routed send was dropped: its target chat's lane is full (the target does not keep up)");
        }
    }
    Ok(())
}

/// Whether `message` was delivered before: its platform's ids are its own
/// (`[capabilities] unique_ids`) and the store has seen this one in its chat. A store that
/// cannot answer lets the message through (a possible repeat rather than a loss).
fn redelivered(gateway: &Gateway, message: &Inbound) -> bool {
    let unique = gateway
        .registry
        .entry(&message.platform)
        .is_ok_and(|e| e.manifest().capabilities.unique_ids);
    if !unique || message.message_id.is_empty() {
        return false;
    }
    match gateway
        .store
        .first_sight(&message.platform, &message.chat_id, &message.message_id)
    {
        Ok(true) => false,
        Ok(false) => {
            gateway.metrics.inbound_duplicate(&message.platform);
            tracing::debug!(platform = %message.platform, chat = %message.chat_id, message_id = %message.message_id, "dropped a message delivered before");
            true
        }
        Err(error) => {
            tracing::warn!(platform = %message.platform, %error, "the store could not say whether a message was seen; delivering it");
            false
        }
    }
}
