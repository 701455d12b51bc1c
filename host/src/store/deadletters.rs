//! Dead letters (queued sends given up on: listed, replayed, dropped), the outbox's figures per
//! platform, and the pruning of sent records.

use std::time::Duration;

use rusqlite::params;

use super::{
    Store, StoreError,
    outbox::{COLUMNS, Delivery, OutboxStats, delivery},
};

impl Store {
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
    /// the one named, or every one (of `platform`). How many, and the chats to wake.
    pub fn replay(
        &self,
        id: Option<&str>,
        platform: Option<&str>,
    ) -> Result<(usize, Vec<(String, String)>), StoreError> {
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
        let replayed = chats.len();
        chats.sort();
        chats.dedup();
        Ok((replayed, chats))
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
