//! The journal: a JSONL record of inbound, outbound and routed messages.
//!
//! Requests never wait on the disk: they hand a record to an unbounded channel and go on. A
//! writer task collects records and writes them in batches, every `flush_ms` or every
//! [`BATCH`] records, whichever comes first, with one `write` and one `flush` per batch. On
//! shutdown the writer drains the channel and flushes. A crash loses at most the batch being
//! collected.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Records per write at most.
pub const BATCH: usize = 512;

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

enum Command {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

/// A handle on the journal writer; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Command>,
    path: PathBuf,
}

/// The writer task; await it after [`Journal::close`] to know everything is on disk.
pub type JournalTask = tokio::task::JoinHandle<()>;

impl Journal {
    /// Opens (appending, creating folders) `path` and starts the writer task.
    pub fn open(path: &Path, flush_every: Duration) -> std::io::Result<(Journal, JournalTask)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer(file, rx, flush_every, path.to_owned()));
        Ok((
            Journal {
                tx,
                path: path.to_owned(),
            },
            task,
        ))
    }

    /// Queues a record; never blocks.
    pub fn record(&self, record: Record) {
        let _ = self.tx.send(Command::Record(Box::new(record)));
    }

    /// Waits until every record queued before this call is written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn writer(
    file: std::fs::File,
    mut rx: mpsc::UnboundedReceiver<Command>,
    flush_every: Duration,
    path: PathBuf,
) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut pending = 0usize;
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush_now = tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Record(record)) => {
                    if let Err(e) = serde_json::to_writer(&mut out, &record).map_err(std::io::Error::from).and_then(|()| out.write_all(b"\n")) {
                        tracing::error!(journal = %path.display(), error = %e, "journal write failed");
                    }
                    pending += 1;
                    pending >= BATCH
                }
                Some(Command::Flush(done)) => {
                    waiters.push(done);
                    true
                }
                None => {
                    finish(&mut out, &path);
                    for w in waiters.drain(..) {
                        let _ = w.send(());
                    }
                    return;
                }
            },
            _ = tick.tick() => pending > 0,
        };
        if flush_now {
            finish(&mut out, &path);
            pending = 0;
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

fn finish(out: &mut std::io::BufWriter<std::fs::File>, path: &Path) {
    if let Err(e) = out.flush() {
        tracing::error!(journal = %path.display(), error = %e, "journal flush failed");
    }
}
