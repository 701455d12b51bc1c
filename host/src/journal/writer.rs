//! The writer thread: takes the queued records, encodes them, writes whole lines, and keeps
//! what it could not write.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{Durability, Queue, Shared};

/// How often a failing journal tries again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The most bytes one `write()` carries; each ends at a line's end.
const CHUNK: usize = 1 << 20;

/// Repairs a torn last line, then opens the journal for appending (0600; the folder is created
/// 0700 when missing). A FIFO is opened without waiting for a reader, then written blocking.
pub(super) fn open(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    if let Some(repaired) = super::repair(path)? {
        tracing::warn!(
            journal = %path.display(),
            bytes = repaired.bytes,
            side_file = %repaired.side_file.display(),
            "the journal ended in a partial line (a crash while writing); moved it to the side file"
        );
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Non-blocking was for the open only (a FIFO without a reader would wait forever).
    let flags = rustix::fs::fcntl_getfl(&file)? - rustix::fs::OFlags::NONBLOCK;
    rustix::fs::fcntl_setfl(&file, flags)?;
    Ok(file)
}

/// The writer's loop; returns once the journal is closed and its queue written (or given up).
pub(super) fn run(shared: &Shared, mut file: File) {
    if shared.options.durability == Durability::Flush {
        // Nice 5 (this thread only, as Linux applies it): with `flush`, nobody waits on this
        // thread, and on a small machine requests and plugin calls should get the cores first.
        let _ = rustix::process::setpriority_process(None, 5);
    }
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    let fsync = shared.options.durability == Durability::Fsync;
    let path = shared.options.path.display().to_string();
    // Lines written to the file but not yet synced (an `fdatasync` that failed).
    let mut unsynced = false;
    // Encoded lines not yet written: a batch, or what is left of it after a failed write.
    let mut pending: Vec<u8> = Vec::new();
    // Two vectors take turns: requests fill one while this thread encodes the other.
    let mut records: Vec<super::Record> = Vec::new();
    // A failed reopen is logged once, and tried again at every batch.
    let mut reopen_failed = false;
    loop {
        let (last, closed) = {
            let mut queue = wait(shared);
            queue.urgent = false;
            std::mem::swap(&mut queue.records, &mut records);
            queue.records_bytes = 0;
            (queue.last, queue.closed)
        };
        if regular {
            follow_path(shared, &mut file, &path, &mut reopen_failed);
        }
        for record in records.drain(..) {
            // A record of plain strings and numbers always encodes.
            let _ = serde_json::to_writer(&mut pending, &record);
            pending.push(b'\n');
        }
        if pending.is_empty() && !unsynced {
            if closed {
                return;
            }
            continue;
        }
        let written = write_lines(&mut file, &pending, regular);
        let done = written.as_ref().map_or_else(|(n, _)| *n, |n| *n);
        let mut result = written.map(|_| ()).map_err(|(_, e)| e);
        if result.is_ok() && fsync && (done > 0 || unsynced) {
            unsynced = true;
            result = file.sync_data();
        }
        if result.is_ok() {
            unsynced = false;
        }
        let lines = pending[..done].iter().filter(|&&b| b == b'\n').count() as u64;
        pending.drain(..done);
        let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        shared.written.fetch_add(lines, Ordering::Relaxed);
        queue.unwritten_bytes = pending.len();
        match result {
            Ok(()) => {
                queue.committed = last;
                if queue.failing.take().is_some() {
                    tracing::info!(journal = %path, "the journal writes again");
                }
                if queue.full && queue.bytes() < shared.options.queue_bytes / 2 {
                    queue.full = false;
                    tracing::info!(journal = %path, "the journal queue drained");
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                queue.failed_through = last;
                if queue.failing.is_none() {
                    tracing::error!(journal = %path, error = %e, "journal write failed: sends are refused and records kept in memory (up to the queue's bound) until it writes again; retrying every {RETRY_EVERY:?}");
                }
                queue.failing = Some(e.to_string());
            }
        }
        let give_up = closed && queue.failing.is_some();
        if give_up {
            let lost = pending.iter().filter(|&&b| b == b'\n').count() + queue.records.len();
            shared.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            tracing::error!(journal = %path, records = lost, "the journal is closing and cannot write; records lost");
            pending.clear();
            queue.records.clear();
            queue.records_bytes = 0;
            queue.unwritten_bytes = 0;
        }
        let finished = closed && (give_up || (queue.bytes() == 0 && !unsynced));
        drop(queue);
        shared.committed.notify_all();
        shared.progress.send_modify(|n| *n += 1);
        if finished {
            return;
        }
    }
}

/// Reopens the journal's path when asked (SIGUSR1, `hermes-host journal reopen`) or when the
/// open file is no longer the one at the path (removed, renamed away by log rotation, or
/// replaced): records go on to the path an operator reads, never to an unlinked inode.
fn follow_path(shared: &Shared, file: &mut File, path: &str, reopen_failed: &mut bool) {
    use std::os::unix::fs::MetadataExt as _;
    let asked = shared.reopen.swap(false, Ordering::AcqRel);
    let moved = || {
        let Ok(open) = file.metadata() else {
            return false;
        };
        match std::fs::metadata(&shared.options.path) {
            Ok(at_path) => {
                open.nlink() == 0 || (open.dev(), open.ino()) != (at_path.dev(), at_path.ino())
            }
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    };
    if !asked && !*reopen_failed && !moved() {
        return;
    }
    match open(&shared.options.path) {
        Ok(new) => {
            // What an `fsync` journal wrote to the old file is on disk before it is let go.
            let _ = file.sync_data();
            *file = new;
            *reopen_failed = false;
            shared.reopens.fetch_add(1, Ordering::Relaxed);
            if asked {
                tracing::info!(journal = %path, "reopened the journal as asked");
            } else {
                tracing::warn!(journal = %path, "the journal file was removed, renamed or replaced; reopened its path");
            }
        }
        Err(e) => {
            if !*reopen_failed {
                tracing::error!(journal = %path, error = %e, "cannot reopen the journal's path; writing on to the open file and trying again at every batch");
            }
            *reopen_failed = true;
        }
    }
}

/// Waits until there is a reason to write: a waiter, the close, or the tick.
fn wait(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    let every = if queue.failing.is_some() {
        RETRY_EVERY
    } else {
        shared.options.flush_every
    };
    let deadline = Instant::now() + every;
    loop {
        if queue.closed
            || (queue.urgent && queue.failing.is_none())
            || shared.reopen.load(Ordering::Acquire)
        {
            return queue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return queue;
        }
        queue = shared
            .wake
            .wait_timeout(queue, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Writes whole lines, at most [`CHUNK`] bytes per `write()`, each ending at a line's end. A
/// short or failed write is cut back (regular files), so only whole lines stay. Returns the
/// bytes written, also on error.
fn write_lines(file: &mut File, data: &[u8], regular: bool) -> Result<usize, (usize, io::Error)> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        let end = if rest.len() <= CHUNK {
            rest.len()
        } else {
            // A line longer than a chunk goes alone, whole.
            rest[..CHUNK].iter().rposition(|&b| b == b'\n').map_or_else(
                || {
                    rest.iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1)
                },
                |i| i + 1,
            )
        };
        let chunk = &rest[..end];
        let before = if regular {
            Some(file.metadata().map_err(|e| (done, e))?.len())
        } else {
            None
        };
        let failure = match file.write(chunk) {
            Ok(n) if n == chunk.len() => None,
            Ok(n) => Some(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write ({n} of {} bytes)", chunk.len()),
            )),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            if let Some(len) = before {
                // Cutting back frees space, so it works on a full disk too.
                let _ = file.set_len(len);
            }
            return Err((done, e));
        }
        done += end;
    }
    Ok(done)
}
