//! Admission: a send reserves room for its record before it reaches a plugin
//! ([`Journal::admit`], [`Reservation`]); an inbound record waits a little for room
//! ([`Journal::record`]); both end in [`Journal::push`], which queues and wakes the writer.

use std::sync::atomic::Ordering;

use super::{ADMIT_WAIT, Durability, Journal, JournalError, Queue, Record, Ticket, WAKE_AT_BYTES};

/// About the length of a line's keys, numbers and quotes.
const FIXED_LEN: usize = 160;

impl Record {
    /// About the length of its line: the texts, plus room for keys and numbers.
    fn estimated_len(&self) -> usize {
        FIXED_LEN
            + self.platform.len()
            + self.chat_id.len()
            + self.user.as_ref().map_or(0, String::len)
            + self.text.len()
            + self.message_id.len()
            + self.route_from.as_ref().map_or(0, String::len)
    }

    /// The room to reserve for a send's record before its message id is known: its texts
    /// (escaping may grow them; the estimate is a bound on the queue, not on the file) and
    /// the longest message id a plugin may return.
    pub fn reserve_len(
        platform: &str,
        chat_id: &str,
        text: &str,
        route_from: Option<&str>,
    ) -> usize {
        FIXED_LEN
            + platform.len()
            + chat_id.len()
            + text.len()
            + crate::message::limits::MESSAGE_ID_BYTES
            + route_from.map_or(0, str::len)
    }
}

/// Room held in the journal's queue for one send's record, taken by [`Journal::admit`] before
/// the send reaches a plugin. [`Reservation::record`] queues the record in it: it never finds
/// the queue full. Dropped unused (the send failed), it gives the room back.
#[must_use = "dropping a reservation gives its room back"]
pub struct Reservation {
    journal: Journal,
    bytes: usize,
}

impl Reservation {
    /// Queues `record` in the reserved room (a record longer than the estimate is queued all
    /// the same: the estimate bounds what the queue holds, not what a send may say).
    pub fn record(mut self, record: Record) -> Result<Ticket, JournalError> {
        let reserved = std::mem::take(&mut self.bytes);
        let mut queue = self.journal.queue();
        queue.reserved -= reserved;
        if queue.closed {
            return Err(JournalError::Closed);
        }
        Ok(self.journal.push(queue, record))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.journal.queue().reserved -= self.bytes;
            // Room came back: a waiting admission may go ahead.
            self.journal.shared.progress.send_modify(|n| *n += 1);
        }
    }
}

impl Journal {
    /// Room for a new send's record of about `bytes` (see [`Record::reserve_len`]), waiting up
    /// to [`ADMIT_WAIT`] while sends hold their half of the queue and the writer is writing (a
    /// burst): `Err` while writes fail, or when no room came.
    pub async fn admit(&self, bytes: usize) -> Result<Reservation, JournalError> {
        match self.try_admit(bytes) {
            Err(JournalError::Full(_)) => {}
            other => return other,
        }
        let mut progress = self.shared.progress.subscribe();
        let room = async {
            loop {
                if progress.changed().await.is_err() {
                    return Err(JournalError::Closed);
                }
                match self.try_admit(bytes) {
                    Err(JournalError::Full(_)) => {}
                    other => return other,
                }
            }
        };
        tokio::time::timeout(ADMIT_WAIT, room)
            .await
            .unwrap_or_else(|_| self.try_admit(bytes))
    }

    /// As [`Journal::admit`], without waiting.
    pub fn try_admit(&self, bytes: usize) -> Result<Reservation, JournalError> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(JournalError::Closed);
        }
        if let Some(e) = &queue.failing {
            return Err(JournalError::Failing(e.clone()));
        }
        // Sends hold at most half the queue; an empty queue takes any one send.
        let room = self.shared.options.queue_bytes / 2;
        if queue.full || (queue.held() > 0 && queue.held() + bytes > room) {
            return Err(JournalError::Full(queue.held()));
        }
        queue.reserved += bytes;
        Ok(Reservation {
            journal: self.clone(),
            bytes,
        })
    }

    /// Queues a record that no reservation covers (an inbound one), waiting up to
    /// [`ADMIT_WAIT`] on the calling (plugin) thread for room. `Err(Full)` when none came: the
    /// record is dropped and counted.
    pub fn record(&self, record: Record) -> Result<Ticket, JournalError> {
        let bytes = record.estimated_len();
        let bound = self.shared.options.queue_bytes;
        let deadline = std::time::Instant::now() + ADMIT_WAIT;
        let mut queue = self.queue();
        loop {
            if queue.closed {
                return Err(JournalError::Closed);
            }
            if queue.held() == 0 || queue.held() + bytes <= bound {
                return Ok(self.push(queue, record));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if !queue.urgent {
                queue.urgent = true;
                self.shared.wake.notify_one();
            }
            queue = self
                .shared
                .committed
                .wait_timeout(queue, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let held = queue.held();
        if !queue.full {
            queue.full = true;
            tracing::error!(journal = %self.shared.options.path.display(), bytes = held, "journal queue full: records are dropped (and counted) and sends refused until it drains");
        }
        drop(queue);
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        Err(JournalError::Full(held))
    }

    /// Appends `record` to the queue (room was checked or reserved) and wakes the writer when
    /// someone will wait for it or a burst piled up.
    fn push(&self, mut queue: std::sync::MutexGuard<'_, Queue>, record: Record) -> Ticket {
        let bytes = record.estimated_len();
        let fsync = self.shared.options.durability == Durability::Fsync;
        queue.records.push(record);
        queue.records_bytes += bytes;
        // A burst does not wait for the tick: past a megabyte, the writer starts now.
        let burst = queue.records_bytes >= WAKE_AT_BYTES.min(self.shared.options.queue_bytes / 4);
        queue.last += 1;
        let ticket = Ticket(queue.last);
        if (fsync || burst) && !queue.urgent {
            // Only the first record of a batch wakes the writer; the rest ride along.
            queue.urgent = true;
            drop(queue);
            self.shared.wake.notify_one();
        }
        ticket
    }
}
