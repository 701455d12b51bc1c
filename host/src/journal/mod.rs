//! The journal: a JSONL record of inbound, outbound and routed messages that keeps what it
//! acknowledged.
//!
//! - **Whole lines.** Requests hand the writer a record (a move, no encoding on their path);
//!   the writer encodes each into one line and writes only whole lines: each `write()` ends at a
//!   line's end, and a short or failed write is cut back with `ftruncate` before it is tried
//!   again, so no fragment stays in the file.
//!   A partial last line left by a crash (`kill -9` inside a `write()`) is moved to
//!   `<path>.corrupt` at the next start ([`repair`]).
//! - **Its own thread.** The writer is a plain thread, never the async runtime: a journal on
//!   slow or stuck storage (a FIFO nobody reads, a hung NFS mount) holds up nothing but itself.
//! - **A bounded queue** of [`JournalOptions::queue_bytes`] (records' sizes as lines,
//!   estimated). A send first takes a [`Reservation`] ([`Journal::admit`]): room in the queue
//!   for its record, held until the record is queued through it, so an admitted send's record
//!   always finds room and the answer never outruns it. Sends may hold at most half the queue;
//!   the other half is kept for inbound records, which the gateway cannot refuse to its peers.
//!   While the journal cannot take a send (writes fail, or no room came within [`ADMIT_WAIT`]:
//!   a burst waits for room, a stuck writer does not hold sends for longer), the gateway
//!   refuses it with 503 (retryable) before it reaches a plugin: nothing is sent that could not
//!   be recorded. An inbound record that finds the queue full waits up to [`ADMIT_WAIT`] on the
//!   plugin's thread (back-pressure on the adapter's reader), then is dropped and counted
//!   (`dropped`).
//! - **Write errors** (a full disk) are counted, logged once when the journal turns degraded
//!   and once when it recovers, and the batch is kept in memory and retried every 500 ms.
//! - **Durability.** `flush` (default): records reach the OS at least every `flush_ms` (and
//!   as soon as a megabyte is queued), so a
//!   crash of the gateway loses at most the last `flush_ms` of records (the OS keeps what it
//!   was given; a power loss may lose more). `fsync`: an acknowledged send or inbound message
//!   is on disk (`fdatasync`) before its answer. Commits group: the writer wakes at the first
//!   waiting record, and every record queued while one `fdatasync` runs shares the next one,
//!   as PostgreSQL's group commit does.
//! - The file is created mode 0600 and opened for appending. The gateway never rotates it, but
//!   follows a rotation: before each batch the writer compares the open file with the path
//!   (link count, device and inode), and reopens the path when the file was removed, renamed
//!   away or replaced; [`Journal::reopen`] (SIGUSR1, `hermes-host journal reopen`) reopens on
//!   request. So `logrotate`'s default `create` mode works, and `copytruncate` too.

mod admission;
mod repair;
mod writer;

#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub(crate) use repair::repair;

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Arrived on a platform.
    Inbound,
    /// Sent through a platform by a client.
    Outbound,
    /// Sent through a platform by a route.
    Routed,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// What happened.
    pub kind: RecordKind,
    /// The platform.
    pub platform: String,
    /// The chat.
    pub chat_id: String,
    /// The sender (inbound only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The text.
    pub text: String,
    /// The platform's message id.
    pub message_id: String,
    /// The generation that handled it.
    pub generation: u64,
    /// For routed messages: `platform/chat` of the source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_from: Option<String>,
}

/// When a record counts as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Written to the OS every `flush_ms`.
    #[default]
    Flush,
    /// On disk before the answer (group commit).
    Fsync,
}

/// How the journal writes.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The JSONL file.
    pub path: PathBuf,
    /// The batch interval (`flush` durability).
    pub flush_every: Duration,
    /// `flush` or `fsync`.
    pub durability: Durability,
    /// The most encoded bytes waiting for the writer.
    pub queue_bytes: usize,
}

/// The queue's default bound: 16 MiB of encoded records.
pub(crate) const DEFAULT_QUEUE_BYTES: usize = 16 << 20;

/// How long a send waits for room in a full queue before it is refused.
pub(crate) const ADMIT_WAIT: Duration = Duration::from_millis(500);

/// Queued bytes that wake the writer before its tick.
const WAKE_AT_BYTES: usize = 1 << 20;

/// Why the journal did not take or keep a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The queue is at its bound (the writer is behind or stuck).
    #[error("the journal's queue is full ({0} bytes waiting); the writer is behind")]
    Full(usize),
    /// Writes fail.
    #[error("the journal cannot write: {0}")]
    Failing(String),
    /// The journal was closed.
    #[error("the journal is closed")]
    Closed,
}

/// A queued record's place in the journal, to wait for its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The journal's state, for status and metrics.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JournalStatus {
    /// The file.
    pub path: PathBuf,
    /// `flush` or `fsync`.
    pub durability: Durability,
    /// `ok` or `degraded` (writes fail, or the queue is full).
    pub state: std::borrow::Cow<'static, str>,
    /// The last write error, while degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Encoded bytes waiting for the writer.
    pub queued_bytes: usize,
    /// Records written since start.
    pub written: u64,
    /// Failed write attempts since start.
    pub errors: u64,
    /// Records dropped since start (the queue was full).
    pub dropped: u64,
    /// Times the file's path was reopened (asked, or after the file was removed or replaced).
    #[serde(default)]
    pub reopens: u64,
}

/// Everything the handles and the writer thread share.
struct Shared {
    options: JournalOptions,
    queue: Mutex<Queue>,
    /// Wakes the writer.
    wake: Condvar,
    /// Wakes threads waiting for a commit.
    committed: Condvar,
    /// The same for async waiters: bumped after every commit attempt.
    progress: tokio::sync::watch::Sender<u64>,
    written: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    /// Times the path was reopened.
    reopens: AtomicU64,
    /// Asked to reopen the path ([`Journal::reopen`]).
    reopen: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Queue {
    /// Records waiting for the writer, in order. The writer encodes them: requests pay for a
    /// move into this vector, not for JSON.
    records: Vec<Record>,
    /// Their size as lines, estimated.
    records_bytes: usize,
    /// Encoded lines the writer holds because writing them failed.
    unwritten_bytes: usize,
    /// Room held by [`Reservation`]s not yet used.
    reserved: usize,
    /// The ticket of the last record queued.
    last: u64,
    /// Every ticket up to this one is written (and synced, for `fsync`).
    committed: u64,
    /// Tickets up to this one were in a batch whose write failed (and are being retried).
    failed_through: u64,
    /// The last write error, while writes fail.
    failing: Option<String>,
    /// Someone waits: write now rather than at the next tick.
    urgent: bool,
    /// No more records; the writer ends once the queue is written.
    closed: bool,
    /// Set while the queue is at its bound; cleared (and logged) when it drains.
    full: bool,
}

impl Queue {
    /// Bytes waiting, queued and unwritten.
    fn bytes(&self) -> usize {
        self.records_bytes + self.unwritten_bytes
    }

    /// Bytes waiting or reserved.
    fn held(&self) -> usize {
        self.bytes() + self.reserved
    }
}

/// A handle on the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

/// The writer thread; [`Journal::close`] ends it.
pub(crate) type JournalThread = std::thread::JoinHandle<()>;

impl Journal {
    /// Repairs a torn last line, opens (appending, creating the folder 0700 and the file 0600)
    /// the journal and starts its writer thread.
    pub fn open(options: JournalOptions) -> std::io::Result<(Journal, JournalThread)> {
        let file = writer::open(&options.path)?;
        let shared = Arc::new(Shared {
            options,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            committed: Condvar::new(),
            progress: tokio::sync::watch::channel(0).0,
            written: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            reopen: std::sync::atomic::AtomicBool::new(false),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("hermes-journal".into())
                .spawn(move || writer::run(&shared, file))?
        };
        Ok((Journal { shared }, thread))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outcome(queue: &Queue, ticket: Ticket) -> Option<Result<(), JournalError>> {
        if queue.committed >= ticket.0 {
            Some(Ok(()))
        } else if queue.failed_through >= ticket.0 {
            Some(Err(JournalError::Failing(
                queue.failing.clone().unwrap_or_default(),
            )))
        } else if queue.closed && queue.bytes() == 0 {
            Some(Err(JournalError::Closed))
        } else {
            None
        }
    }

    /// Waits until `ticket` is kept as the durability says: at once for `flush`, after its
    /// `fdatasync` for `fsync`. `Err` when the write failed (it is retried, but the caller's
    /// answer must not claim it is kept).
    pub async fn committed(&self, ticket: Ticket) -> Result<(), JournalError> {
        if self.shared.options.durability == Durability::Flush {
            return Ok(());
        }
        self.wait_for(ticket).await
    }

    /// As [`Journal::committed`], blocking the calling (plugin) thread.
    pub fn committed_blocking(&self, ticket: Ticket) -> Result<(), JournalError> {
        if self.shared.options.durability == Durability::Flush {
            return Ok(());
        }
        let mut queue = self.queue();
        loop {
            if let Some(outcome) = Self::outcome(&queue, ticket) {
                return outcome;
            }
            queue = self
                .shared
                .committed
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    async fn wait_for(&self, ticket: Ticket) -> Result<(), JournalError> {
        let mut progress = self.shared.progress.subscribe();
        loop {
            if let Some(outcome) = Self::outcome(&self.queue(), ticket) {
                return outcome;
            }
            if progress.changed().await.is_err() {
                return Err(JournalError::Closed);
            }
        }
    }

    /// Asks the writer to reopen the journal's path before its next batch (after a log
    /// rotation that renamed the file; one that removed or replaced it is noticed anyway).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        // Taking the lock orders the flag before the writer's next look at it.
        drop(self.queue());
        self.shared.wake.notify_one();
    }

    /// No more records: the writer writes what is queued (trying once more if writes fail) and
    /// ends. Join the [`JournalThread`] to wait for it.
    pub fn close(&self) {
        self.queue().closed = true;
        self.shared.wake.notify_one();
    }

    /// The durability it writes with.
    pub fn durability(&self) -> Durability {
        self.shared.options.durability
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.shared.options.path
    }

    /// State and counters.
    pub fn status(&self) -> JournalStatus {
        let queue = self.queue();
        let degraded = queue.failing.is_some() || queue.full;
        JournalStatus {
            path: self.shared.options.path.clone(),
            durability: self.shared.options.durability,
            state: if degraded { "degraded" } else { "ok" }.into(),
            error: queue.failing.clone().or_else(|| {
                queue
                    .full
                    .then(|| JournalError::Full(queue.bytes()).to_string())
            }),
            queued_bytes: queue.bytes(),
            written: self.shared.written.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            reopens: self.shared.reopens.load(Ordering::Relaxed),
        }
    }
}
