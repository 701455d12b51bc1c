//! Inbound message ids already delivered, per platform and chat: an adapter that redelivers
//! after a reconnect (a sync position that was not saved, a broker's retained or re-queued
//! message) does not reach SSE, routes and the journal twice.

use std::time::Duration;

use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// Records that `id` in `platform`/`chat` was delivered; `false` when it already was.
    pub fn first_sight(&self, platform: &str, chat: &str, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("INSERT OR IGNORE INTO inbound_seen VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut stmt| {
                stmt.execute(params![platform, chat, id, hermes_plugin_api::now_ms()])
            })
            .map(|n| n == 1)
            .map_err(|e| self.error(&e))
    }

    /// Forgets ids seen longer ago than `age`.
    pub fn prune_seen(&self, age: Duration) -> Result<usize, StoreError> {
        let before = hermes_plugin_api::now_ms() - i64::try_from(age.as_millis()).unwrap_or(0);
        self.conn()
            .execute(
                "DELETE FROM inbound_seen WHERE seen_ms < ?1",
                params![before],
            )
            .map_err(|e| self.error(&e))
    }
}
