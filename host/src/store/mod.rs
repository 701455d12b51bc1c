//! The gateway's embedded store: one SQLite database in the state dir (`hermes.db`, WAL
//! mode), behind this narrow interface. Nothing outside this module speaks SQL, so a store
//! shared by several gateways (PostgreSQL) can stand in for it later.
//!
//! It holds the outbox of queued sends and their dead letters ([`Delivery`]), the answers to
//! requests with an `Idempotency-Key` ([`Claim`]), the inbound message ids already delivered
//! (so a platform's redelivery is not delivered twice), and the message map: for each message
//! a route carried, the source (platform, chat, message id) and each copy's. An edit, delete, reaction or reply that arrives later on either
//! side finds its counterpart there, across restarts. Entries older than
//! [`MESSAGE_MAP_RETENTION`] are pruned when the store opens.
//!
//! The schema is versioned (`PRAGMA user_version`) and migrated when the store opens; a store
//! written by a newer gateway is refused in one line.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, params};

mod deadletters;
mod idempotency;
mod inbound;
mod outbox;

pub use idempotency::Claim;
pub use outbox::{
    Delivery, DeliveryState, Enqueued, NewDelivery, OutboxStats, Pending, queued_answer,
};

/// The schema version this gateway writes.
pub const SCHEMA_VERSION: i64 = 3;

/// How long a routed message's counterparts are kept.
pub const MESSAGE_MAP_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The store's file in the state dir.
pub const FILE: &str = "hermes.db";

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE message_map (
        src_platform TEXT NOT NULL,
        src_chat TEXT NOT NULL,
        src_id TEXT NOT NULL,
        dst_platform TEXT NOT NULL,
        dst_chat TEXT NOT NULL,
        dst_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (src_platform, src_chat, src_id, dst_platform, dst_chat)
    ) WITHOUT ROWID;
    CREATE INDEX message_map_by_copy ON message_map (dst_platform, dst_chat, dst_id);",
    "CREATE TABLE idempotency (
        platform TEXT NOT NULL,
        key TEXT NOT NULL,
        request TEXT NOT NULL,
        owner TEXT NOT NULL,
        status INTEGER,
        answer TEXT,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (platform, key)
    ) WITHOUT ROWID;",
    "CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        platform TEXT NOT NULL,
        chat TEXT NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        idempotency_key TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        message_id TEXT,
        last_error TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        due_ms INTEGER NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox (platform, chat, seq)
        WHERE state = 'queued';
    CREATE INDEX outbox_state ON outbox (state, platform);
    CREATE TABLE inbound_seen (
        platform TEXT NOT NULL,
        chat TEXT NOT NULL,
        id TEXT NOT NULL,
        seen_ms INTEGER NOT NULL,
        PRIMARY KEY (platform, chat, id)
    ) WITHOUT ROWID;
    CREATE INDEX inbound_seen_age ON inbound_seen (seen_ms);",
];

/// A message on a platform: where it is and its id there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// The platform.
    pub platform: String,
    /// The chat on it.
    pub chat: String,
    /// The platform's id for the message.
    pub id: String,
}

/// Why the store could not do something; names the file.
#[derive(Debug, thiserror::Error)]
#[error("store {}: {message}", path.display())]
pub struct StoreError {
    /// The database file (`:memory:` for a store in memory).
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The embedded store.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) `<state_dir>/hermes.db`, migrates it and prunes old entries.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(FILE);
        let fail = |message: String| StoreError {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| fail(format!("cannot make {}: {e}", state_dir.display())))?;
        // Message text lives here: readable by the gateway's user alone (SQLite gives its WAL
        // and shared-memory files the database's mode).
        {
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| fail(e.to_string()))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail(e.to_string()))?;
        }
        let conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        Self::prepare(conn, path.clone())
    }

    /// A store in memory, for tools and tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| StoreError {
            path: ":memory:".into(),
            message: e.to_string(),
        })?;
        Self::prepare(conn, ":memory:".into())
    }

    fn prepare(mut conn: Connection, path: PathBuf) -> Result<Store, StoreError> {
        let fail = |message: String| StoreError {
            path: path.clone(),
            message,
        };
        // WAL: readers never wait for the writer; NORMAL: a commit is durable at the next
        // checkpoint, and the database never corrupts on a crash. A busy wait instead of an
        // error while another connection (a second gateway) writes.
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|()| conn.busy_timeout(Duration::from_secs(5)))
            .map_err(|e| fail(e.to_string()))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| fail(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(fail(format!(
                "schema version {version} was written by a newer hermes-host (this one knows up to {SCHEMA_VERSION}); run that version, or move the file away to start afresh"
            )));
        }
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(|e| fail(e.to_string()))?;
            tx.execute_batch(migration)
                .and_then(|()| tx.pragma_update(None, "user_version", from as i64 + 1))
                .and_then(|()| tx.commit())
                .map_err(|e| fail(format!("migrating to schema version {}: {e}", from + 1)))?;
        }
        let store = Store {
            conn: Mutex::new(conn),
            path,
        };
        store.prune(MESSAGE_MAP_RETENTION)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn error(&self, e: &rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Records that a route carried `source` to `copy` (a later copy to the same chat
    /// replaces an earlier one: the first part of a split text is the copy).
    pub fn record_copy(&self, source: &MessageRef, copy: &MessageRef) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO message_map VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    source.platform,
                    source.chat,
                    source.id,
                    copy.platform,
                    copy.chat,
                    copy.id,
                    hermes_plugin_api::now_ms()
                ],
            )
            .map(drop)
            .map_err(|e| self.error(&e))
    }

    /// The id in `platform`/`chat` of the message `message` stands for there: its copy, when a
    /// route carried it there, or its source, when it is itself a copy from there.
    pub fn counterpart(
        &self,
        message: &MessageRef,
        platform: &str,
        chat: &str,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let copy = conn
            .query_row(
                "SELECT dst_id FROM message_map
                 WHERE src_platform = ?1 AND src_chat = ?2 AND src_id = ?3
                   AND dst_platform = ?4 AND dst_chat = ?5",
                params![message.platform, message.chat, message.id, platform, chat],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error(&e))?;
        if copy.is_some() {
            return Ok(copy);
        }
        conn.query_row(
            "SELECT src_id FROM message_map
             WHERE dst_platform = ?1 AND dst_chat = ?2 AND dst_id = ?3
               AND src_platform = ?4 AND src_chat = ?5
             ORDER BY created_ms DESC LIMIT 1",
            params![message.platform, message.chat, message.id, platform, chat],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| self.error(&e))
    }

    /// Removes map entries older than `age`.
    pub fn prune(&self, age: Duration) -> Result<usize, StoreError> {
        let before = hermes_plugin_api::now_ms() - i64::try_from(age.as_millis()).unwrap_or(0);
        self.conn()
            .execute(
                "DELETE FROM message_map WHERE created_ms < ?1",
                params![before],
            )
            .map_err(|e| self.error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(platform: &str, chat: &str, id: &str) -> MessageRef {
        MessageRef {
            platform: platform.into(),
            chat: chat.into(),
            id: id.into(),
        }
    }

    #[test]
    fn counterparts_are_found_both_ways_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .record_copy(&at("irc", "#a", "i1"), &at("mqtt", "t", "m1"))
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let found = |m: MessageRef, p: &str, c: &str| store.counterpart(&m, p, c).unwrap();
        assert_eq!(found(at("irc", "#a", "i1"), "mqtt", "t"), Some("m1".into()));
        assert_eq!(found(at("mqtt", "t", "m1"), "irc", "#a"), Some("i1".into()));
        assert_eq!(found(at("irc", "#a", "i1"), "mqtt", "other"), None);
        assert_eq!(found(at("irc", "#a", "nope"), "mqtt", "t"), None);
        use std::os::unix::fs::PermissionsExt as _;
        for file in [FILE, "hermes.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    #[test]
    fn a_store_of_a_newer_schema_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("hermes.db: schema version 99 was written by a newer hermes-host"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }
}
