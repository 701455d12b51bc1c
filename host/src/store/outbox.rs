//! The outbox: sends accepted with `Prefer: respond-async`, kept until they are delivered or
//! become dead letters.
//!
//! A record is written once when it is accepted ([`Store::enqueue`], many requests in one
//! transaction: group commit), and once more when it is settled, `sent` or `dead` (or after a
//! failed attempt, with the next one's time), as the delivery lanes ([`crate::delivery`]) work
//! through it. Records are taken in the order
//! they were accepted, per platform and chat (`seq`). A sent record keeps its metadata (for
//! `GET /api/deliveries/{id}`) but not its body; a dead one keeps its body for a replay.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

use super::{Claim, Store, StoreError, idempotency::claim_in};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its turn, its rate budget or its next attempt.
    Queued,
    /// Handed to the platform now. Never stored: a queued record that a lane is sending shows
    /// so ([`crate::delivery::Outbox::sending`]); after a crash it is queued, and sent again
    /// with the same idempotency key.
    Sending,
    /// Delivered.
    Sent,
    /// Given up on: a dead letter with its last error, until replayed or dropped.
    Dead,
}

impl DeliveryState {
    /// The lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sending => "sending",
            DeliveryState::Sent => "sent",
            DeliveryState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> DeliveryState {
        match s {
            "sending" => DeliveryState::Sending,
            "sent" => DeliveryState::Sent,
            "dead" => DeliveryState::Dead,
            _ => DeliveryState::Queued,
        }
    }
}

/// A delivery as `GET /api/deliveries/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Its id.
    pub delivery_id: String,
    /// The platform it goes through.
    pub platform: String,
    /// The chat it goes to.
    pub chat_id: String,
    /// `message`, `edit`, `delete` or `reaction`.
    #[serde(rename = "message_kind")]
    pub kind: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Calls made so far.
    pub attempts: u32,
    /// The platform's id for it, once sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was accepted (ms since the epoch).
    pub created_ms: i64,
    /// When its state last changed.
    pub updated_ms: i64,
}

/// A request to queue.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The platform.
    pub platform: String,
    /// The chat.
    pub chat: String,
    /// The message's kind (`message`, `edit`, ...), which says how `body` parses.
    pub kind: String,
    /// The request's body, parsed again when it is sent.
    pub body: Vec<u8>,
    /// The client's `Idempotency-Key`, with the request's hash.
    pub key: Option<(String, String)>,
}

/// What became of a request to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued under this id.
    Queued(String),
    /// Its idempotency key was met before: the claim says what the client gets.
    Seen(Claim),
}

/// A queued record, as a delivery lane takes it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The record.
    pub delivery: Delivery,
    /// The request's body.
    pub body: Vec<u8>,
    /// The key handed to the plugin: the client's, or the delivery id.
    pub idempotency_key: String,
    /// Not to be tried before this time (ms since the epoch).
    pub due_ms: i64,
}

/// One platform's outbox, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Records queued or being sent.
    pub queued: u32,
    /// When the oldest of them was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_ms: Option<i64>,
    /// Dead letters.
    pub dead: u32,
}

pub(super) const COLUMNS: &str =
    "id, platform, chat, kind, state, attempts, message_id, last_error, created_ms, updated_ms";

pub(super) fn delivery(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        delivery_id: r.get(0)?,
        platform: r.get(1)?,
        chat_id: r.get(2)?,
        kind: r.get(3)?,
        state: DeliveryState::parse(&r.get::<_, String>(4)?),
        attempts: r.get(5)?,
        message_id: r.get(6)?,
        last_error: r.get(7)?,
        created_ms: r.get(8)?,
        updated_ms: r.get(9)?,
    })
}

/// A fresh delivery id: 16 hex digits from this run, a counter and the clock, so ids never
/// repeat across runs or a new store (the id is the platform's idempotency key when the
/// client gave none).
fn new_id(owner: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{owner}/{n}/{nanos}");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

impl Store {
    /// Queues `items` in one transaction, as gateway run `owner`; an item with a key is
    /// queued only when the key is new (its answer, the delivery id, is kept with it in the
    /// same write). With `fsync`, the commit is on disk before this returns; otherwise it
    /// survives the process's death (a `kill -9`), not the machine's.
    pub fn enqueue(
        &self,
        items: &[NewDelivery],
        owner: &str,
        ttl: Duration,
        fsync: bool,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let mut conn = self.conn();
        let sync = if fsync { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(|e| self.error(&e))?;
        let now = hermes_plugin_api::now_ms();
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some((key, request)) = &item.key {
                    match claim_in(&tx, &item.platform, key, request, owner, ttl)? {
                        Claim::New => {}
                        seen => {
                            out.push(Enqueued::Seen(seen));
                            continue;
                        }
                    }
                }
                let id = new_id(owner);
                tx.execute(
                    "INSERT INTO outbox (id, platform, chat, kind, body, idempotency_key, state,
                        attempts, created_ms, updated_ms, due_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?7, ?7)",
                    params![
                        id,
                        item.platform,
                        item.chat,
                        item.kind,
                        item.body,
                        item.key.as_ref().map(|(k, _)| k),
                        now
                    ],
                )?;
                if let Some((key, _)) = &item.key {
                    tx.execute(
                        "UPDATE idempotency SET status = 202, answer = ?3
                         WHERE platform = ?1 AND key = ?2",
                        params![item.platform, key, queued_answer(&id)],
                    )?;
                }
                out.push(Enqueued::Queued(id));
            }
            tx.commit()?;
            Ok(out)
        })();
        if fsync {
            let _ = conn.pragma_update(None, "synchronous", "NORMAL");
        }
        result.map_err(|e: rusqlite::Error| self.error(&e))
    }

    /// The next records to deliver to `platform`/`chat`, oldest first, `limit` at most.
    pub fn pending(
        &self,
        platform: &str,
        chat: &str,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, body, COALESCE(idempotency_key, id), due_ms FROM outbox
                 WHERE platform = ?1 AND chat = ?2 AND state = 'queued'
                 ORDER BY seq LIMIT ?3"
            ))
            .map_err(|e| self.error(&e))?;
        stmt.query_map(params![platform, chat, limit as i64], |r| {
            Ok(Pending {
                delivery: delivery(r)?,
                body: r.get(10)?,
                idempotency_key: r.get(11)?,
                due_ms: r.get(12)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.error(&e))
    }

    /// Every platform and chat with records to deliver (at start: the outbox resumes).
    pub fn pending_chats(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT platform, chat FROM outbox WHERE state = 'queued'
                 GROUP BY platform, chat ORDER BY MIN(seq)",
            )
            .map_err(|e| self.error(&e))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.error(&e))
    }

    /// Delivered as `message_id` after one attempt more; the body is no longer needed. The
    /// record as it now stands.
    pub fn mark_sent(&self, id: &str, message_id: &str) -> Result<Option<Delivery>, StoreError> {
        self.settle(
            "UPDATE outbox SET state = 'sent', message_id = ?3, body = x'',
                attempts = attempts + 1, updated_ms = ?2 WHERE id = ?1",
            id,
            message_id,
        )
    }

    /// One attempt more failed with `error`; the next one is due at `due_ms`.
    pub fn mark_retry(&self, id: &str, error: &str, due_ms: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE outbox SET last_error = ?3, due_ms = ?4, attempts = attempts + 1,
                updated_ms = ?2 WHERE id = ?1",
            params![id, hermes_plugin_api::now_ms(), error, due_ms],
        )
    }

    /// Given up on, with its last `error` (`attempted`: after a call, which counts): a dead
    /// letter. The record as it now stands.
    pub fn mark_dead(
        &self,
        id: &str,
        error: &str,
        attempted: bool,
    ) -> Result<Option<Delivery>, StoreError> {
        let sql = if attempted {
            "UPDATE outbox SET state = 'dead', last_error = ?3, attempts = attempts + 1,
                updated_ms = ?2 WHERE id = ?1"
        } else {
            "UPDATE outbox SET state = 'dead', last_error = ?3, updated_ms = ?2 WHERE id = ?1"
        };
        self.settle(sql, id, error)
    }

    fn settle(&self, update: &str, id: &str, text: &str) -> Result<Option<Delivery>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(&format!("{update} RETURNING {COLUMNS}"))
            .and_then(|mut stmt| {
                stmt.query_row(params![id, hermes_plugin_api::now_ms(), text], delivery)
                    .optional()
            })
            .map_err(|e| self.error(&e))
    }

    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map(drop)
            .map_err(|e| self.error(&e))
    }

    /// A delivery by id.
    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM outbox WHERE id = ?1"),
                params![id],
                delivery,
            )
            .optional()
            .map_err(|e| self.error(&e))
    }
}

/// The answer to a queued request: `{"delivery_id": ..., "state": "queued"}`.
pub fn queued_answer(id: &str) -> String {
    serde_json::json!({"delivery_id": id, "state": "queued"}).to_string()
}

#[cfg(test)]
mod tests;
