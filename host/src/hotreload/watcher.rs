//! One plugin's watcher thread: the events of its library's and manifest's folders, the
//! debounce, the complete-file fast path and the reload when the file is another one.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use notify::EventKind;

use super::Msg;
use crate::registry::{EntryState, Registry};

/// inode, size and mtime: what says the file is another one.
type Fingerprint = Option<(u64, u64, u64, i64, i64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

fn relevant(event: &notify::Event, library: &Path, manifest: &Path) -> bool {
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    ) && event.paths.iter().any(|p| p == library || p == manifest)
}

pub(super) fn watch_loop(
    registry: &Registry,
    id: &str,
    library: &Path,
    manifest: &Path,
    debounce: Duration,
    rx: &mpsc::Receiver<Msg>,
) {
    let mut seen = (fingerprint(library), fingerprint(manifest));
    let mut pending: Option<Instant> = None;
    loop {
        let msg = match pending {
            Some(since) => match rx.recv_timeout(debounce.saturating_sub(since.elapsed())) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            },
        };
        match msg {
            Some(Msg::Stop) => return,
            Some(Msg::Event(Ok(event))) => {
                if !relevant(&event, library, manifest) {
                    continue;
                }
                // A library put in place whole (cargo links the finished file in) reloads at
                // once; anything else waits for the quiet period.
                if event.paths.iter().any(|p| p == library) && complete_and_settled(library) {
                    pending = None;
                    reload_if_changed(registry, id, library, manifest, &mut seen);
                } else {
                    // Every relevant event restarts the quiet period.
                    pending = Some(Instant::now());
                }
            }
            Some(Msg::Event(Err(e))) => tracing::warn!(platform = id, error = %e, "watch error"),
            None => {
                // Quiet for `debounce`.
                pending = None;
                reload_if_changed(registry, id, library, manifest, &mut seen);
            }
        }
    }
}

/// How long a complete library must keep its inode, size and mtime to count as settled.
const SETTLE: Duration = Duration::from_millis(5);

/// Whether `library` is a complete shared object (every segment inside the file) that stays
/// the same file for [`SETTLE`]: a finished file linked or renamed into place, not one being
/// written.
fn complete_and_settled(library: &Path) -> bool {
    let Some(before) = fingerprint(library) else {
        return false;
    };
    if !crate::loader::is_complete_shared_object(library) {
        return false;
    }
    std::thread::sleep(SETTLE);
    fingerprint(library) == Some(before)
}

/// Reloads `id` if its library or manifest is another file than the one last seen and the
/// platform is running.
fn reload_if_changed(
    registry: &Registry,
    id: &str,
    library: &Path,
    manifest: &Path,
    seen: &mut (Fingerprint, Fingerprint),
) {
    let now = (fingerprint(library), fingerprint(manifest));
    if now.0.is_none() {
        // Removed and not back yet: cargo's Create follows, or the user deleted it.
        return;
    }
    if now == *seen {
        tracing::debug!(
            platform = id,
            "library unchanged (inode, size, mtime); no reload"
        );
        return;
    }
    *seen = now;
    // A reload, load or stop in progress decides whether the platform runs: wait for it, so a
    // library rebuilt while another reload drains is loaded after it, not dropped.
    let running = registry
        .entry(id)
        .is_ok_and(|e| e.settled_state_blocking() == EntryState::Running);
    if !running {
        tracing::info!(
            platform = id,
            "library changed; not running, the next load uses it"
        );
        return;
    }
    let _ = registry.reload(id, "watcher");
}
