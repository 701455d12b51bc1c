//! Routed sends, one lane per target chat: the sends a route asks for go to their target chat
//! in the order their sources arrived (an edit never overtakes the message it edits), each
//! lane on its own task, so a slow or failing target holds up only its own chat.
//!
//! Before each send, the ids a routed message carries from its source (the message an edit,
//! delete or reaction is about, the message replied to, the thread) are mapped to the target's
//! through the store's message map; an edit, delete or reaction whose message has no copy
//! there is not sent (there is nothing to change). Once a message is sent, its copy is recorded.
//!
//! A lane holds at most [`LANE_DEPTH`] sends; past that, new ones for that chat are dropped and
//! counted (`hermes_routed_total{result="dropped"}`), so a target that stopped answering
//! cannot grow the gateway's memory without bound.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use tokio::sync::mpsc;

use super::{Gateway, InFlightGuard};
use crate::{
    journal::RecordKind,
    message::MessageKind,
    routing::RoutedSend,
    store::{MessageRef, Store},
};

/// Routed sends waiting in one target chat's lane, at most.
pub const LANE_DEPTH: usize = 1024;

type Item = (RoutedSend, InFlightGuard);

/// The lanes, one per target `platform/chat`, made on first use.
#[derive(Default)]
pub struct Lanes(Mutex<HashMap<(String, String), mpsc::Sender<Item>>>);

impl Lanes {
    /// Queues `send` on its target chat's lane; `false` when the lane is full (dropped).
    pub(super) fn push(
        &self,
        gateway: &Arc<Gateway>,
        send: RoutedSend,
        runtime: &tokio::runtime::Handle,
    ) -> bool {
        let key = (send.platform.clone(), send.message.chat_id.clone());
        let guard = gateway.begin();
        let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let lane = lanes.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LANE_DEPTH);
            runtime.spawn(run(Arc::downgrade(gateway), rx));
            tx
        });
        lane.try_send((send, guard)).is_ok()
    }
}

/// A lane's task: its sends, one after the other, while the gateway lives.
async fn run(gateway: Weak<Gateway>, mut rx: mpsc::Receiver<Item>) {
    while let Some((send, guard)) = rx.recv().await {
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        route_one(&gateway, send).await;
        drop(guard);
    }
}

async fn route_one(gateway: &Arc<Gateway>, send: RoutedSend) {
    let RoutedSend {
        platform,
        mut message,
        source,
        origin,
    } = send;
    let store = &gateway.store;
    let counterpart = |id: &str| {
        let at = MessageRef {
            id: id.to_owned(),
            ..origin.clone()
        };
        store
            .counterpart(&at, &platform, &message.chat_id)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "message map lookup failed");
                None
            })
    };
    if let Some(target) = message.target_id.as_deref() {
        match counterpart(target) {
            Some(copy) => message.target_id = Some(copy),
            None => {
                gateway.metrics.routed("unmapped");
                tracing::debug!(from = %source, to = %platform, kind = %message.kind, target, "not routed: the message it is about has no copy there");
                return;
            }
        }
    }
    message.reply_to = message.reply_to.as_deref().and_then(counterpart);
    message.thread_id = message.thread_id.as_deref().and_then(counterpart);
    let chat = message.chat_id.clone();
    let kind = message.kind;
    let sent = gateway
        .send(&platform, message, RecordKind::Routed, Some(source.clone()))
        .await;
    match sent {
        Ok(ok) => {
            gateway.metrics.routed("ok");
            if kind == MessageKind::Message {
                record(store, &origin, &platform, &chat, ok.message_id);
            }
        }
        Err(e) => {
            gateway.metrics.routed("error");
            tracing::warn!(from = %source, to = %platform, error = %e, "routed send failed");
        }
    }
}

fn record(store: &Store, origin: &MessageRef, platform: &str, chat: &str, id: String) {
    let copy = MessageRef {
        platform: platform.to_owned(),
        chat: chat.to_owned(),
        id,
    };
    if let Err(e) = store.record_copy(origin, &copy) {
        tracing::warn!(error = %e, "a routed message's copy was not recorded; later edits of it will not follow");
    }
}
