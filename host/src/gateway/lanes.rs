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
    // The store's reads and writes run on the blocking pool: no disk I/O on a runtime thread.
    let ids = [
        message.target_id.take(),
        message.reply_to.take(),
        message.thread_id.take(),
    ];
    let (store, at, to, chat) = (
        Arc::clone(&gateway.store),
        origin.clone(),
        platform.clone(),
        message.chat_id.clone(),
    );
    let mapped = tokio::task::spawn_blocking(move || {
        ids.map(|id| id.map(|id| counterpart(&store, &at, &id, &to, &chat)))
    })
    .await
    .unwrap_or_default();
    let [target, reply_to, thread_id] = mapped;
    if let Some(target) = target {
        match target {
            Some(copy) => message.target_id = Some(copy),
            None => {
                gateway.metrics.routed("unmapped");
                tracing::debug!(from = %source, to = %platform, kind = %message.kind, "not routed: the message it is about has no copy there");
                return;
            }
        }
    }
    message.reply_to = reply_to.flatten();
    message.thread_id = thread_id.flatten();
    let chat = message.chat_id.clone();
    let kind = message.kind;
    let sent = gateway
        .send(&platform, message, RecordKind::Routed, Some(source.clone()))
        .await;
    match sent {
        Ok(ok) if kind == MessageKind::Message => {
            gateway.metrics.routed("ok");
            let store = Arc::clone(&gateway.store);
            let copy = MessageRef {
                platform,
                chat,
                id: ok.message_id,
            };
            let recorded =
                tokio::task::spawn_blocking(move || store.record_copy(&origin, &copy)).await;
            if let Ok(Err(e)) = recorded {
                tracing::warn!(error = %e, "a routed message's copy was not recorded; later edits of it will not follow");
            }
        }
        Ok(_) => gateway.metrics.routed("ok"),
        Err(e) => {
            gateway.metrics.routed("error");
            tracing::warn!(from = %source, to = %platform, error = %e, "routed send failed");
        }
    }
}

/// The id in `platform`/`chat` of the message `id` of the source `at` stands for.
fn counterpart(
    store: &Store,
    at: &MessageRef,
    id: &str,
    platform: &str,
    chat: &str,
) -> Option<String> {
    let at = MessageRef {
        id: id.to_owned(),
        ..at.clone()
    };
    store.counterpart(&at, platform, chat).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "message map lookup failed");
        None
    })
}
