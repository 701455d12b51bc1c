//! Delivery: accepted means delivered.
//!
//! A send with `Prefer: respond-async` is written to the outbox in the store and answered
//! 202 once the write is durable ([`Outbox::enqueue`]: one writer thread commits every request
//! waiting at that moment in one transaction, so with `fsync` many requests share one disk
//! flush). Then one lane per platform and chat (a task that lives while the chat has records)
//! takes the records in the order they were accepted, waits for the rate budget
//! ([`budget`]), and sends each through the same path as a direct send
//! ([`Gateway::send_via`]). A call that fails is retried with backoff ([`policy`]), after the
//! platform's `retry_after_ms` when it gave one, until `max_attempts` or `max_age_secs`; then
//! the record is a dead letter with its last error. A refusal that no retry can change (the
//! platform cannot carry the message, or the plugin says it is not retryable) is a dead letter
//! at once. A dead letter holds its chat's place no longer: the records after it go on.
//!
//! Nothing queued is lost when the platform is down, reloading, crashed or unloaded (each is a
//! retryable failure, or a wait), nor when the gateway dies: at start every chat with queued
//! records gets its lane again ([`Outbox::resume`]). A record that was being sent when the
//! gateway died is sent again with the same idempotency key (the client's, else the delivery
//! id), so platforms that dedupe by it post it once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::{
    gateway::{Gateway, SendError, send::Via},
    journal::RecordKind,
    message::MessageKind,
    store::{Delivery, DeliveryState, Enqueued, NewDelivery, Store},
};

pub mod budget;
pub mod policy;

/// Requests committed together at most.
const MAX_BATCH: usize = 512;

struct Job {
    item: NewDelivery,
    reply: oneshot::Sender<Result<Enqueued, String>>,
}

#[derive(Default)]
struct Lane {
    /// Set when a record was queued (or replayed) while the lane ran: it looks again before
    /// it ends.
    again: AtomicBool,
    wake: Notify,
}

/// The outbox: the writer of accepted records, the lanes delivering them, the rate budgets.
pub struct Outbox {
    writer: Mutex<mpsc::Sender<Job>>,
    lanes: Mutex<HashMap<(String, String), Arc<Lane>>>,
    /// Records handed to their platform right now.
    sending: Mutex<std::collections::HashSet<String>>,
    /// Every platform's rate budget, shared by direct and queued sends.
    pub budgets: budget::Budgets,
}

/// What an SSE subscriber is told when a delivery is sent or dead.
#[derive(Serialize)]
struct DeliveryEvent<'a> {
    kind: &'static str,
    #[serde(flatten)]
    delivery: &'a Delivery,
}

impl Outbox {
    /// Starts the writer thread over `store`, as gateway run `owner`; idempotency answers
    /// live `ttl`; `fsync` puts every commit on disk before it is answered.
    pub fn start(store: Arc<Store>, owner: String, ttl: Duration, fsync: bool) -> Outbox {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("hermes-outbox".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    let (items, replies): (Vec<_>, Vec<_>) =
                        jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
                    match store.enqueue(&items, &owner, ttl, fsync) {
                        Ok(results) => {
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(Ok(result));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "queued sends were not accepted");
                            for reply in replies {
                                let _ = reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the outbox writer did not start; queued sends are refused");
        }
        Outbox {
            writer: Mutex::new(tx),
            lanes: Mutex::default(),
            sending: Mutex::default(),
            budgets: budget::Budgets::default(),
        }
    }

    /// Writes `item` to the outbox; returns once it is durable.
    pub async fn enqueue(&self, item: NewDelivery) -> Result<Enqueued, String> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job { item, reply })
            .map_err(|_| "the outbox writer is gone".to_owned())?;
        answer
            .await
            .map_err(|_| "the outbox writer is gone".to_owned())?
    }

    /// `delivery` as it stands: `sending` while a lane has it with its platform.
    pub fn sending(&self, mut delivery: Delivery) -> Delivery {
        if delivery.state == DeliveryState::Queued
            && self
                .sending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&delivery.delivery_id)
        {
            delivery.state = DeliveryState::Sending;
        }
        delivery
    }

    /// Chats whose lane runs now.
    pub fn active_lanes(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Starts a lane for every chat with queued records (at start).
    pub async fn resume(gateway: &Arc<Gateway>) {
        let store = Arc::clone(&gateway.store);
        match tokio::task::spawn_blocking(move || store.pending_chats()).await {
            Ok(Ok(chats)) => {
                if !chats.is_empty() {
                    tracing::info!(chats = chats.len(), "the outbox resumes");
                }
                for (platform, chat) in chats {
                    wake(gateway, &platform, &chat);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "the outbox could not resume"),
            Err(e) => tracing::error!(error = %e, "the outbox could not resume"),
        }
    }
}

/// Makes sure the lane of `platform`/`chat` runs and looks at its records again.
pub fn wake(gateway: &Arc<Gateway>, platform: &str, chat: &str) {
    let mut lanes = gateway
        .outbox
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (platform.to_owned(), chat.to_owned());
    if let Some(lane) = lanes.get(&key) {
        lane.again.store(true, Ordering::Release);
        lane.wake.notify_one();
        return;
    }
    let lane = Arc::new(Lane::default());
    lanes.insert(key.clone(), Arc::clone(&lane));
    tokio::spawn(run_lane(Arc::clone(gateway), key, lane));
}

/// Records a lane reads at once.
const LANE_BATCH: usize = 64;

/// One chat's lane: its records one at a time, in order, until none is left.
async fn run_lane(gateway: Arc<Gateway>, key: (String, String), lane: Arc<Lane>) {
    let (platform, chat) = (&key.0, &key.1);
    let mut shutdown = gateway.shutdown.subscribe();
    'lane: loop {
        if *shutdown.borrow() {
            break;
        }
        lane.again.store(false, Ordering::Release);
        let (p, c) = (platform.clone(), chat.clone());
        let batch = gateway
            .on_store(move |s| s.pending(&p, &c, LANE_BATCH))
            .await;
        let wait = match batch {
            Ok(batch) if batch.is_empty() => {
                let mut lanes = gateway
                    .outbox
                    .lanes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if lane.again.load(Ordering::Acquire) {
                    continue;
                }
                lanes.remove(&key);
                return;
            }
            Ok(batch) => {
                let mut wait = None;
                for pending in batch {
                    let now = hermes_plugin_api::now_ms();
                    if pending.due_ms > now {
                        wait = Some(Duration::from_millis((pending.due_ms - now) as u64));
                        break;
                    }
                    // A record not settled (to be retried, or its state not written) is read
                    // again, in its place.
                    if !attempt(&gateway, pending).await || *shutdown.borrow() {
                        continue 'lane;
                    }
                }
                match wait {
                    Some(wait) => wait,
                    None => continue,
                }
            }
            Err(error) => {
                tracing::error!(platform, chat, %error, "the outbox cannot be read; trying again in 1 s");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = lane.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    gateway
        .outbox
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key);
}

/// One attempt at the record: sent, retried later, or a dead letter; whether it was settled
/// (sent or dead).
async fn attempt(gateway: &Arc<Gateway>, pending: crate::store::Pending) -> bool {
    let delivery = pending.delivery;
    let (platform, id) = (delivery.platform.clone(), delivery.delivery_id.clone());
    let policy = gateway.delivery_policy(&platform);
    let age = hermes_plugin_api::now_ms() - delivery.created_ms;
    if age > i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX) {
        let error = format!(
            "not delivered within max_age_secs ({} s); last error: {}",
            policy.max_age.as_secs(),
            delivery.last_error.as_deref().unwrap_or("none")
        );
        return settle(gateway, &id, Err((error, false))).await;
    }
    let kind = kind_named(&delivery.kind);
    let mut message = match crate::api::bodies::parse_message(kind, &pending.body) {
        Ok(message) => message,
        Err(e) => return settle(gateway, &id, Err((e.message, false))).await,
    };
    message.idempotency_key = Some(pending.idempotency_key);
    let sent = {
        let _counted = gateway.begin();
        let _sending = Sending::mark(&gateway.outbox, &id);
        gateway
            .send_via(&platform, message, RecordKind::Outbound, None, Via::Outbox)
            .await
    };
    let attempts = delivery.attempts + 1;
    gateway.metrics.delivery_attempt(&platform);
    let outcome = match sent {
        Ok(ok) => Ok(ok.message_id),
        // Out, but not journaled: delivered all the same.
        Err(SendError::NotJournaled { message_id, .. }) => Ok(message_id),
        Err(e) if e.permanent() || attempts >= policy.max_attempts => {
            Err((format!("{e} (after {attempts} attempts)"), true))
        }
        Err(e) => {
            let wait = policy.retry_delay(attempts, e.retry_after());
            let error = e.to_string();
            tracing::info!(platform, delivery_id = %id, attempts, %error, wait_ms = wait.as_millis() as u64, "a queued send will be tried again");
            let due = hermes_plugin_api::now_ms() + i64::try_from(wait.as_millis()).unwrap_or(0);
            let rid = id.clone();
            if let Err(error) = gateway
                .on_store(move |s| s.mark_retry(&rid, &error, due))
                .await
            {
                tracing::error!(platform, delivery_id = %id, %error, "the outbox cannot be written");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return false;
        }
    };
    settle(gateway, &id, outcome).await
}

/// The record is sent (its message id) or dead (its last error, and whether a call was made):
/// stored, told to SSE. Whether it was stored.
async fn settle(gateway: &Arc<Gateway>, id: &str, outcome: Result<String, (String, bool)>) -> bool {
    let rid = id.to_owned();
    let stored = gateway
        .on_store(move |s| match &outcome {
            Ok(message_id) => s.mark_sent(&rid, message_id),
            Err((error, attempted)) => s.mark_dead(&rid, error, *attempted),
        })
        .await;
    match stored {
        Ok(Some(delivery)) => {
            if delivery.state == DeliveryState::Dead {
                tracing::warn!(platform = %delivery.platform, delivery_id = %id, error = delivery.last_error.as_deref().unwrap_or(""), "a queued send is a dead letter");
            }
            gateway
                .metrics
                .delivery_settled(&delivery.platform, delivery.state);
            gateway.events.publish(&DeliveryEvent {
                kind: "delivery",
                delivery: &delivery,
            });
            true
        }
        // Dropped meanwhile: nothing left to settle.
        Ok(None) => true,
        Err(error) => {
            tracing::error!(delivery_id = %id, %error, "the outbox cannot be written; the record stays queued");
            tokio::time::sleep(Duration::from_secs(1)).await;
            false
        }
    }
}

/// Marks a record as being sent (for `GET /api/deliveries/{id}`) while it lives.
struct Sending<'a>(&'a Outbox, String);

impl<'a> Sending<'a> {
    fn mark(outbox: &'a Outbox, id: &str) -> Sending<'a> {
        outbox
            .sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
        Sending(outbox, id.to_owned())
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0
            .sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// The kind a record was queued as.
fn kind_named(name: &str) -> MessageKind {
    match name {
        "edit" => MessageKind::Edit,
        "delete" => MessageKind::Delete,
        "reaction" => MessageKind::Reaction,
        _ => MessageKind::Message,
    }
}
