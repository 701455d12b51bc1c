//! Hot reload: a debounced watcher per plugin that reloads a rebuilt library in place.
//!
//! How cargo replaces a library (measured): it writes `deps/libX.so.tmpXXXX`, renames it, then
//! unlinks `target/debug/libX.so` and hard-links the new file in; a watcher sees Remove then
//! Create about 5 ms apart, and the file is complete at Create. So each watch:
//! - watches the library's folder and the manifest's folder, non-recursively (a watch on the file
//!   itself goes stale when the file is replaced);
//! - reacts to create, modify and remove of those two exact paths, ignores access events (taking
//!   the shadow copy reads the file) and every other file;
//! - reloads at once when the library event leaves a complete shared object in place (every
//!   segment inside the file) that keeps its inode, size and mtime for 5 ms: cargo's hard link
//!   of a finished file, or a rename; anything else (a file still being written, the manifest)
//!   waits for `debounce` of quiet;
//! - skips when the library's inode, size and mtime and the manifest's are what it last saw;
//! - reloads through the transaction in [`crate::reload`]: a half-written or broken library is a
//!   refused reload, and the old generation goes on serving.
//!
//! Hot reload is off unless `[hotreload] allowed = true` or `serve --dev`; a config reload may
//! turn it on (the persisted watches start) or off (every watch stops). The watched set is
//! written atomically to `<state_dir>/hotreload.json` and restored when the server starts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use serde::{Deserialize, Serialize};

use crate::{
    registry::{EntryState, Registry},
    reload::ReloadStats,
};

mod watcher;

use watcher::watch_loop;

/// The file, under the state dir, that lists the watched plugins.
pub(crate) const STATE_FILE: &str = "hotreload.json";

/// Why hot reload could not be turned on or off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HotReloadError {
    /// Not allowed by config or `--dev`.
    #[error(
        "hot reload is not allowed: set `[hotreload] allowed = true` in {config} or run `hermes-host serve --dev`"
    )]
    NotAllowed {
        /// The config file, for the message.
        config: String,
    },
    /// No such plugin.
    #[error("no plugin with id `{0}` is installed")]
    Unknown(String),
    /// The library or the watch could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// One plugin's hot-reload status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// The platform.
    pub id: String,
    /// Whether a watcher runs for it.
    pub watching: bool,
    /// The library file watched.
    pub path: Option<PathBuf>,
    /// The generation serving.
    pub generation: u64,
    /// The entry's state.
    pub state: EntryState,
    /// Reload counts and the last outcome.
    #[serde(flatten)]
    pub reloads: ReloadStats,
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    watched: Vec<String>,
}

struct Watch {
    library: PathBuf,
    stop: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    // Dropping it ends the OS watches.
    _watcher: notify::RecommendedWatcher,
}

enum Msg {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// The hot-reload manager of a running server.
pub struct HotReload {
    registry: Arc<Registry>,
    /// `[hotreload] allowed` (or `--dev`); a config reload may change it.
    allowed: std::sync::atomic::AtomicBool,
    /// `serve --dev`: allowed whatever the config says.
    dev: bool,
    debounce: Duration,
    state_file: PathBuf,
    config_name: String,
    watches: Mutex<BTreeMap<String, Watch>>,
    /// Held while the watched set is read and written: two enables at once each write the
    /// set as it is after both, never an older one last.
    persisting: Mutex<()>,
}

impl HotReload {
    /// A manager; nothing is watched until [`HotReload::restore`] or [`HotReload::enable`].
    pub fn new(
        registry: Arc<Registry>,
        allowed: bool,
        dev: bool,
        debounce: Duration,
        state_dir: &Path,
        config_name: String,
    ) -> Self {
        HotReload {
            registry,
            allowed: std::sync::atomic::AtomicBool::new(allowed || dev),
            dev,
            debounce,
            state_file: state_dir.join(STATE_FILE),
            config_name,
            watches: Mutex::new(BTreeMap::new()),
            persisting: Mutex::new(()),
        }
    }

    /// Whether hot reload may be enabled.
    pub fn allowed(&self) -> bool {
        self.allowed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A config reload's `[hotreload] allowed` (`serve --dev` keeps it allowed): turned on, the
    /// persisted watches start; turned off, every watch stops (the persisted set is kept, as
    /// at shutdown, for when it is allowed again). Whether it changed.
    pub fn set_allowed(&self, allowed: bool) -> bool {
        let allowed = allowed || self.dev;
        let was = self
            .allowed
            .swap(allowed, std::sync::atomic::Ordering::AcqRel);
        match (was, allowed) {
            (false, true) => self.restore(),
            (true, false) => self.stop_all(),
            _ => return false,
        }
        tracing::info!(
            allowed,
            "hot reload {}",
            if allowed {
                "allowed"
            } else {
                "no longer allowed; watches stopped"
            }
        );
        true
    }

    /// The ids persisted as watched.
    /// A file that cannot be read or parsed is logged (naming it) and counts as empty.
    pub fn persisted(&self) -> Vec<String> {
        let bytes = match std::fs::read(&self.state_file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(file = %self.state_file.display(), error = %e, "cannot read the persisted hot-reload watches; none restored");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<Persisted>(&bytes) {
            Ok(p) => p.watched,
            Err(e) => {
                tracing::warn!(file = %self.state_file.display(), error = %e, "the persisted hot-reload watches do not parse; none restored (the file is rewritten at the next hotreload-enable or -disable)");
                Vec::new()
            }
        }
    }

    /// Starts the watches persisted by an earlier run (when allowed).
    pub fn restore(&self) {
        let ids = self.persisted();
        if ids.is_empty() {
            return;
        }
        if !self.allowed() {
            tracing::warn!(watched = ?ids, "hot reload is not allowed; persisted watches not started (`serve --dev` or `[hotreload] allowed = true`)");
            return;
        }
        for id in ids {
            if let Err(e) = self.start_watch(&id) {
                tracing::warn!(platform = %id, error = %e, "cannot restore hot reload");
            }
        }
    }

    /// Watches `id`'s library and manifest and persists the watched set.
    pub fn enable(&self, id: &str) -> Result<WatchStatus, HotReloadError> {
        if !self.allowed() {
            return Err(HotReloadError::NotAllowed {
                config: self.config_name.clone(),
            });
        }
        self.start_watch(id)?;
        self.persist()?;
        Ok(self.status_of(id).expect("registered"))
    }

    /// Stops watching `id` and persists the watched set.
    pub fn disable(&self, id: &str) -> Result<WatchStatus, HotReloadError> {
        if !self.registry.is_registered(id) {
            return Err(HotReloadError::Unknown(id.to_owned()));
        }
        let watch = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.registry.set_lock_lenient(id, false);
        if let Some(mut watch) = watch {
            let _ = watch.stop.send(Msg::Stop);
            if let Some(thread) = watch.thread.take() {
                let _ = thread.join();
            }
        }
        self.persist()?;
        Ok(self.status_of(id).expect("registered"))
    }

    /// Every plugin that is configured, watched or was ever reloaded.
    pub fn status(&self) -> Vec<WatchStatus> {
        self.registry
            .entries()
            .filter(|e| {
                e.configured()
                    || e.reload_stats().last.is_some()
                    || self
                        .watches
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&e.manifest().id)
            })
            .map(|e| e.manifest().id.clone())
            .filter_map(|id| self.status_of(&id))
            .collect()
    }

    /// One plugin's status.
    pub fn status_of(&self, id: &str) -> Option<WatchStatus> {
        let entry = self.registry.entry(id).ok()?;
        let status = entry.status();
        let path = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|w| w.library.clone());
        Some(WatchStatus {
            id: id.to_owned(),
            watching: path.is_some(),
            path,
            generation: status.generation,
            state: status.state,
            reloads: entry.reload_stats(),
        })
    }

    /// Stops every watch (shutdown); the persisted set is kept for the next start.
    pub fn stop_all(&self) {
        let watches = std::mem::take(&mut *self.watches.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, mut watch) in watches {
            let _ = watch.stop.send(Msg::Stop);
            if let Some(thread) = watch.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn start_watch(&self, id: &str) -> Result<(), HotReloadError> {
        let entry = self
            .registry
            .entry(id)
            .map_err(|_| HotReloadError::Unknown(id.to_owned()))?;
        if self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
        {
            return Ok(());
        }
        let library = self
            .registry
            .resolve_library(entry)
            .map_err(|e| HotReloadError::Setup(e.to_string()))?;
        // Compare like the kernel reports them: absolute paths.
        let library = std::path::absolute(&library).unwrap_or(library);
        let manifest = std::path::absolute(entry.manifest_path())
            .unwrap_or_else(|_| entry.manifest_path().to_owned());
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = events.send(Msg::Event(e));
        })
        .map_err(|e| HotReloadError::Setup(format!("watcher: {e}")))?;
        for dir in [library.parent(), manifest.parent()].into_iter().flatten() {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| HotReloadError::Setup(format!("watching {}: {e}", dir.display())))?;
        }
        let registry = Arc::clone(&self.registry);
        let debounce = self.debounce;
        let (lib, man, platform) = (library.clone(), manifest, id.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("hermes-watch-{id}"))
            .spawn(move || watch_loop(&registry, &platform, &lib, &man, debounce, &rx))
            .map_err(|e| HotReloadError::Setup(format!("watch thread: {e}")))?;
        tracing::info!(platform = id, library = %library.display(), "hot reload on");
        // `serve --dev`: a watched plugin's rebuilds are loaded though hermes.lock pins another
        // library (with a warning), so the edit loop stays one command.
        self.registry.set_lock_lenient(id, self.dev);
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.to_owned(),
                Watch {
                    library,
                    stop: tx,
                    thread: Some(thread),
                    _watcher: watcher,
                },
            );
        Ok(())
    }

    fn persist(&self) -> Result<(), HotReloadError> {
        let _one_at_a_time = self.persisting.lock().unwrap_or_else(|e| e.into_inner());
        let watched: Vec<String> = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let dir = self.state_file.parent().unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer_pretty(tmp.as_file_mut(), &Persisted { watched })?;
            tmp.as_file().sync_all()?;
            tmp.persist(&self.state_file).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| HotReloadError::Setup(format!("{}: {e}", self.state_file.display())))
    }
}
