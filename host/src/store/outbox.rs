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

const COLUMNS: &str =
    "id, platform, chat, kind, state, attempts, message_id, last_error, created_ms, updated_ms";

fn delivery(r: &Row<'_>) -> rusqlite::Result<Delivery> {
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

    /// Dead letters, oldest first, of one platform or all.
    pub fn dead_letters(&self, platform: Option<&str>) -> Result<Vec<Delivery>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE state = 'dead'
                 AND (?1 IS NULL OR platform = ?1) ORDER BY seq"
            ))
            .map_err(|e| self.error(&e))?;
        stmt.query_map(params![platform], delivery)
            .and_then(Iterator::collect)
            .map_err(|e| self.error(&e))
    }

    /// Queues dead letters again, with their attempts counted afresh and their age from now:
    /// the one named, or every one (of `platform`). The chats to wake.
    pub fn replay(
        &self,
        id: Option<&str>,
        platform: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let now = hermes_plugin_api::now_ms();
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "UPDATE outbox SET state = 'queued', attempts = 0, created_ms = ?3,
                    updated_ms = ?3, due_ms = ?3
                 WHERE state = 'dead' AND (?1 IS NULL OR id = ?1)
                   AND (?2 IS NULL OR platform = ?2)
                 RETURNING platform, chat",
            )
            .map_err(|e| self.error(&e))?;
        let mut chats: Vec<(String, String)> = stmt
            .query_map(params![id, platform, now], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| self.error(&e))?;
        chats.sort();
        chats.dedup();
        Ok(chats)
    }

    /// Removes a dead letter; whether there was one.
    pub fn drop_dead(&self, id: &str) -> Result<bool, StoreError> {
        self.conn()
            .execute(
                "DELETE FROM outbox WHERE id = ?1 AND state = 'dead'",
                params![id],
            )
            .map(|n| n > 0)
            .map_err(|e| self.error(&e))
    }

    /// Per platform: records queued, the oldest's age, dead letters.
    pub fn outbox_stats(
        &self,
    ) -> Result<std::collections::BTreeMap<String, OutboxStats>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT platform,
                    SUM(state = 'queued'),
                    MIN(CASE WHEN state = 'queued' THEN created_ms END),
                    SUM(state = 'dead')
                 FROM outbox WHERE state != 'sent' GROUP BY platform",
            )
            .map_err(|e| self.error(&e))?;
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                OutboxStats {
                    queued: r.get(1)?,
                    oldest_ms: r.get(2)?,
                    dead: r.get(3)?,
                },
            ))
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.error(&e))
    }

    /// Removes sent records older than `age`.
    pub fn prune_sent(&self, age: Duration) -> Result<usize, StoreError> {
        let before = hermes_plugin_api::now_ms() - i64::try_from(age.as_millis()).unwrap_or(0);
        self.conn()
            .execute(
                "DELETE FROM outbox WHERE state = 'sent' AND updated_ms < ?1",
                params![before],
            )
            .map_err(|e| self.error(&e))
    }
}

/// The answer to a queued request: `{"delivery_id": ..., "state": "queued"}`.
pub fn queued_answer(id: &str) -> String {
    serde_json::json!({"delivery_id": id, "state": "queued"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn item(chat: &str, text: &str, key: Option<&str>) -> NewDelivery {
        NewDelivery {
            platform: "lb".into(),
            chat: chat.into(),
            kind: "message".into(),
            body: text.as_bytes().to_vec(),
            key: key.map(|k| (k.to_owned(), format!("hash-{text}"))),
        }
    }

    fn queued(e: &Enqueued) -> String {
        match e {
            Enqueued::Queued(id) => id.clone(),
            Enqueued::Seen(claim) => panic!("not queued: {claim:?}"),
        }
    }

    #[test]
    fn records_go_in_order_per_chat_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let out = store
            .enqueue(
                &[
                    item("a", "1", None),
                    item("b", "x", None),
                    item("a", "2", None),
                ],
                "run1",
                DAY,
                true,
            )
            .unwrap();
        let ids: Vec<String> = out.iter().map(queued).collect();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.pending_chats().unwrap(),
            [("lb".into(), "a".into()), ("lb".into(), "b".into())]
        );
        let next = store.pending("lb", "a", 10).unwrap();
        let order: Vec<&str> = next
            .iter()
            .map(|p| p.delivery.delivery_id.as_str())
            .collect();
        assert_eq!(order, [ids[0].as_str(), ids[2].as_str()]);
        assert_eq!(&next[0].body[..], b"1");
        assert_eq!(
            next[0].idempotency_key, ids[0],
            "no client key: the delivery id"
        );
        // A failed attempt keeps the record first, due later.
        store.mark_retry(&ids[0], "down", 42).unwrap();
        let next = store.pending("lb", "a", 1).unwrap();
        assert_eq!((next[0].delivery.attempts, next[0].due_ms), (1, 42));
        let sent = store.mark_sent(&ids[0], "m1").unwrap().unwrap();
        assert_eq!((sent.state, sent.attempts), (DeliveryState::Sent, 2));
        assert_eq!(sent.message_id.as_deref(), Some("m1"));
        assert_eq!(store.delivery(&ids[0]).unwrap(), Some(sent));
        let next = store.pending("lb", "a", 10).unwrap();
        assert_eq!(next[0].delivery.delivery_id, ids[2]);
    }

    #[test]
    fn a_key_queues_once_and_dead_letters_replay_and_drop() {
        let store = Store::in_memory().unwrap();
        let first = store
            .enqueue(&[item("a", "1", Some("k"))], "run1", DAY, false)
            .unwrap();
        let id = queued(&first[0]);
        let again = store
            .enqueue(
                &[item("a", "1", Some("k")), item("a", "2", Some("k"))],
                "run2",
                DAY,
                false,
            )
            .unwrap();
        assert_eq!(
            again,
            [
                Enqueued::Seen(Claim::Answered {
                    status: 202,
                    answer: queued_answer(&id)
                }),
                Enqueued::Seen(Claim::Conflict)
            ]
        );
        assert_eq!(store.pending("lb", "a", 1).unwrap()[0].idempotency_key, "k");
        store.mark_dead(&id, "refused", true).unwrap();
        assert!(store.pending("lb", "a", 1).unwrap().is_empty());
        let stats = store.outbox_stats().unwrap();
        assert_eq!((stats["lb"].queued, stats["lb"].dead), (0, 1));
        let dead = store.dead_letters(Some("lb")).unwrap();
        assert_eq!(dead[0].last_error.as_deref(), Some("refused"));
        assert!(store.dead_letters(Some("irc")).unwrap().is_empty());
        assert_eq!(
            store.replay(Some(&id), None).unwrap(),
            [("lb".into(), "a".into())]
        );
        let back = &store.pending("lb", "a", 1).unwrap()[0];
        assert_eq!((back.delivery.attempts, &back.body[..]), (0, &b"1"[..]));
        assert!(!store.drop_dead(&id).unwrap(), "queued, not dead");
        store.mark_dead(&id, "again", false).unwrap();
        assert!(store.drop_dead(&id).unwrap());
        assert_eq!(store.delivery(&id).unwrap(), None);
    }
}
