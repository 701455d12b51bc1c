//! The SSE fan-out: each subscriber has its own bounded queue of encoded events.
//!
//! A message is encoded once, when it is published, as its whole SSE frame
//! (`data: <json>\n\n`), and that one buffer ([`Bytes`], reference-counted) is shared by every
//! subscriber's queue and by every connection's write queue down to the socket: 10,000
//! subscribers of a 30 KB message hold 30 KB, not 300 MB. A subscriber that falls behind by more than [`MAX_QUEUED`] events or
//! [`MAX_QUEUED_BYTES`] bytes is dropped: its queue is freed at once, it gets one
//! `event: lagged` and its stream ends, so a client that never reads pins at most
//! `MAX_QUEUED_BYTES` (plus what the kernel's socket buffers hold), never the gateway's memory.
//! A client that is told `lagged` reconnects and reads the journal for what it missed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::Notify;

#[cfg(any(doc, test))]
use crate::message::Inbound;

/// Events queued for one subscriber at most.
pub(crate) const MAX_QUEUED: usize = 4096;

/// Bytes of encoded events queued for one subscriber at most.
pub(crate) const MAX_QUEUED_BYTES: usize = 4 << 20;

/// What a subscriber's stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One inbound message: its SSE frame, `data: <json>\n\n` (JSON has no raw newline).
    Message(Bytes),
    /// The subscriber fell behind past the bounds; the stream ends after this.
    Lagged {
        /// Events it had queued when it was dropped.
        queued: usize,
    },
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Bytes>,
    bytes: usize,
    lagged: Option<usize>,
}

#[derive(Default)]
struct Subscriber {
    queue: Mutex<Queue>,
    ready: Notify,
}

/// Every SSE subscriber.
#[derive(Default)]
pub struct Events {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Events {
    /// Hands `message` (an [`Inbound`] message, or a delivery's news) to every subscriber;
    /// encodes it only if there is one.
    pub fn publish(&self, message: &impl serde::Serialize) {
        let subscribers = lock(&self.subscribers);
        if subscribers.is_empty() {
            return;
        }
        let mut frame = b"data: ".to_vec();
        if serde_json::to_writer(&mut frame, message).is_err() {
            return;
        }
        frame.extend_from_slice(b"\n\n");
        let json = Bytes::from(frame);
        for subscriber in subscribers.iter() {
            let mut queue = lock(&subscriber.queue);
            if queue.lagged.is_some() {
                continue;
            }
            if queue.events.len() >= MAX_QUEUED || queue.bytes + json.len() > MAX_QUEUED_BYTES {
                queue.lagged = Some(queue.events.len());
                queue.events = VecDeque::new();
                queue.bytes = 0;
            } else {
                queue.bytes += json.len();
                queue.events.push_back(json.clone());
            }
            drop(queue);
            subscriber.ready.notify_one();
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// A new subscription: every message published from now on, until it lags.
    pub fn subscribe(self: &Arc<Self>) -> impl Stream<Item = Event> + Send + 'static + use<> {
        let subscriber = Arc::new(Subscriber::default());
        lock(&self.subscribers).push(Arc::clone(&subscriber));
        let guard = Unsubscribe {
            events: Arc::clone(self),
            subscriber,
        };
        futures_util::stream::unfold(Some(guard), |guard| async move {
            let guard = guard?;
            let subscriber = Arc::clone(&guard.subscriber);
            loop {
                let notified = subscriber.ready.notified();
                {
                    let mut queue = lock(&subscriber.queue);
                    if let Some(queued) = queue.lagged {
                        return Some((Event::Lagged { queued }, None));
                    }
                    if let Some(json) = queue.events.pop_front() {
                        queue.bytes -= json.len();
                        drop(queue);
                        return Some((Event::Message(json), Some(guard)));
                    }
                }
                notified.await;
            }
        })
    }
}

/// Removes its subscriber when the stream is dropped (the client left, or lagged).
struct Unsubscribe {
    events: Arc<Events>,
    subscriber: Arc<Subscriber>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        lock(&self.events.subscribers).retain(|s| !Arc::ptr_eq(s, &self.subscriber));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    fn message(text: &str) -> Inbound {
        Inbound {
            platform: "p".into(),
            chat_id: "c".into(),
            user: "u".into(),
            text: text.into(),
            message_id: "1".into(),
            timestamp: 0,
            generation: 1,
            ..Inbound::default()
        }
    }

    #[tokio::test]
    async fn a_subscriber_past_the_byte_bound_is_told_and_dropped() {
        let events = Arc::new(Events::default());
        let mut slow = Box::pin(events.subscribe());
        let mut fast = Box::pin(events.subscribe());
        let text = "x".repeat(60_000);
        for _ in 0..100 {
            events.publish(&message(&text));
            assert!(matches!(fast.next().await, Some(Event::Message(_))));
        }
        // 100 x 60 KB is past 4 MiB: the slow one is dropped, its queue freed.
        assert!(matches!(slow.next().await, Some(Event::Lagged { .. })));
        assert_eq!(slow.next().await, None);
        drop(slow);
        assert_eq!(events.subscribers(), 1);
    }
}
