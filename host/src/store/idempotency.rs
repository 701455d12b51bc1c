//! Idempotency keys: the first answer to a request with an `Idempotency-Key` is kept (per
//! platform and key, for the TTL) and returned for every repeat, across restarts and `kill -9`;
//! the same key with another request is refused.
//!
//! A request claims its key before it is sent (a pending row owned by this gateway run), and
//! the answer is written when it comes. A repeat while the first is still pending is told so
//! (retryable). A pending row left by a run that died (its owner is another run) is taken over:
//! the outcome of that send is unknown, so it goes again, with the same key handed to the
//! plugin, whose platform may dedupe by it. An answer that says "try again" is not kept (the row
//! is released), so the client's retry is sent.

use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Store, StoreError};

/// What a request with a key finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's now: send it, then [`Store::answer`] or [`Store::release`].
    New,
    /// Answered before: this status and JSON answer, for the same request.
    Answered {
        /// The HTTP status of the first answer.
        status: u16,
        /// Its JSON body.
        answer: String,
    },
    /// The same request is being sent right now.
    InProgress,
    /// The key was used for another request.
    Conflict,
}

/// A key's row.
struct Held {
    request: String,
    owner: String,
    status: Option<u16>,
    answer: Option<String>,
    created_ms: i64,
}

impl Store {
    /// Claims `key` on `platform` for the request whose hash is `request`, as gateway run
    /// `owner`; answers older than `ttl` count as gone.
    pub fn claim(
        &self,
        platform: &str,
        key: &str,
        request: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(&e))?;
        let claim = claim_in(&tx, platform, key, request, owner, ttl)
            .and_then(|claim| tx.commit().map(|()| claim))
            .map_err(|e| self.error(&e))?;
        Ok(claim)
    }

    /// Keeps the answer to the request that claimed `key`.
    pub fn answer(
        &self,
        platform: &str,
        key: &str,
        status: u16,
        answer: &str,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE idempotency SET status = ?3, answer = ?4 WHERE platform = ?1 AND key = ?2",
                params![platform, key, status, answer],
            )
            .map(drop)
            .map_err(|e| self.error(&e))
    }

    /// Lets go of `key` without an answer (the send may be tried again).
    pub fn release(&self, platform: &str, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "DELETE FROM idempotency WHERE platform = ?1 AND key = ?2 AND status IS NULL",
                params![platform, key],
            )
            .map(drop)
            .map_err(|e| self.error(&e))
    }

    /// Removes answers older than `ttl`.
    pub fn prune_idempotency(&self, ttl: Duration) -> Result<usize, StoreError> {
        let oldest = hermes_plugin_api::now_ms() - i64::try_from(ttl.as_millis()).unwrap_or(0);
        self.conn()
            .execute(
                "DELETE FROM idempotency WHERE created_ms <= ?1",
                params![oldest],
            )
            .map_err(|e| self.error(&e))
    }
}

/// [`Store::claim`] inside the caller's transaction: on [`Claim::New`] the pending row is
/// written, to be committed with whatever else the transaction does (a queued delivery and
/// its answer, in [`Store::enqueue`]).
pub(super) fn claim_in(
    tx: &Transaction<'_>,
    platform: &str,
    key: &str,
    request: &str,
    owner: &str,
    ttl: Duration,
) -> rusqlite::Result<Claim> {
    let now = hermes_plugin_api::now_ms();
    let oldest = now - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let row = tx
        .query_row(
            "SELECT request, owner, status, answer, created_ms FROM idempotency
             WHERE platform = ?1 AND key = ?2",
            params![platform, key],
            |r| {
                Ok(Held {
                    request: r.get(0)?,
                    owner: r.get(1)?,
                    status: r.get(2)?,
                    answer: r.get(3)?,
                    created_ms: r.get(4)?,
                })
            },
        )
        .optional()?;
    let claim = match row {
        Some(held) if held.created_ms <= oldest => None,
        Some(held) if held.request != request => Some(Claim::Conflict),
        Some(Held {
            status: Some(status),
            answer,
            ..
        }) => Some(Claim::Answered {
            status,
            answer: answer.unwrap_or_default(),
        }),
        Some(held) if held.owner == owner => Some(Claim::InProgress),
        // Pending in a run that died: its outcome is unknown; this request takes it over.
        Some(_) | None => None,
    };
    if let Some(claim) = claim {
        return Ok(claim);
    }
    tx.execute(
        "INSERT OR REPLACE INTO idempotency VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5)",
        params![platform, key, request, owner, now],
    )?;
    Ok(Claim::New)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_key_is_claimed_answered_replayed_and_refused_for_another_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.claim("lb", "k", "h1", "run1", DAY).unwrap(),
            Claim::New
        );
        assert_eq!(
            store.claim("lb", "k", "h1", "run1", DAY).unwrap(),
            Claim::InProgress
        );
        store
            .answer("lb", "k", 200, "{\"message_id\":\"m\"}")
            .unwrap();
        drop(store);
        // Across a restart (another run): the same answer; another body: a conflict.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.claim("lb", "k", "h1", "run2", DAY).unwrap(),
            Claim::Answered {
                status: 200,
                answer: "{\"message_id\":\"m\"}".into()
            }
        );
        assert_eq!(
            store.claim("lb", "k", "h2", "run2", DAY).unwrap(),
            Claim::Conflict
        );
        // Another platform's key is another key.
        assert_eq!(
            store.claim("irc", "k", "h2", "run2", DAY).unwrap(),
            Claim::New
        );
        // A pending claim of a run that died is taken over; a released one is free again.
        assert_eq!(
            store.claim("lb", "p", "h", "run1", DAY).unwrap(),
            Claim::New
        );
        assert_eq!(
            store.claim("lb", "p", "h", "run2", DAY).unwrap(),
            Claim::New
        );
        store.release("lb", "p").unwrap();
        assert_eq!(
            store.claim("lb", "p", "h", "run2", DAY).unwrap(),
            Claim::New
        );
        // Past the TTL an answer is gone.
        assert_eq!(
            store
                .claim("lb", "k", "h3", "run2", Duration::ZERO)
                .unwrap(),
            Claim::New
        );
    }
}
