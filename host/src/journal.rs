//! The journal: a JSONL record of inbound, outbound and routed messages.
//!
//! Requests never wait on the disk: they hand a record to an unbounded channel and go on, and do
//! not even wake the writer. The writer task wakes every `flush_ms` (or when asked to flush),
//! takes every queued record, and writes them through a 256 KiB buffer: one `write` per batch,
//! or per 256 KiB in a burst, never one per message. [`Journal::flush`] and shutdown write
//! everything queued before them. A crash loses at most the records of the last `flush_ms`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// The write buffer: a burst larger than this is written in pieces of this size.
pub const BUFFER: usize = 256 * 1024;

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
    wake: std::sync::Arc<tokio::sync::Notify>,
    path: PathBuf,
}

/// The writer task; it ends (after a last write) once every `Journal` handle is dropped.
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
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let writer = writer(
            file,
            rx,
            std::sync::Arc::clone(&wake),
            flush_every,
            path.to_owned(),
        );
        let task = tokio::spawn(writer);
        Ok((
            Journal {
                tx,
                wake,
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
            self.wake.notify_one();
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
    wake: std::sync::Arc<tokio::sync::Notify>,
    flush_every: Duration,
    path: PathBuf,
) {
    let mut out = std::io::BufWriter::with_capacity(BUFFER, file);
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        // `try_recv` registers no waker: senders never wake this task.
        let mut waiters = Vec::new();
        let mut written = 0usize;
        let closed = loop {
            match rx.try_recv() {
                Ok(Command::Record(record)) => {
                    let line = serde_json::to_writer(&mut out, &record)
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"));
                    if let Err(e) = line {
                        tracing::error!(journal = %path.display(), error = %e, "journal write failed");
                    }
                    written += 1;
                }
                Ok(Command::Flush(done)) => waiters.push(done),
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        if written > 0 || !waiters.is_empty() || closed {
            finish(&mut out, &path);
        }
        for w in waiters {
            let _ = w.send(());
        }
        if closed {
            return;
        }
    }
}

fn finish(out: &mut std::io::BufWriter<std::fs::File>, path: &Path) {
    if let Err(e) = out.flush() {
        tracing::error!(journal = %path.display(), error = %e, "journal flush failed");
    }
}
