//! A registry entry: what the registry knows of one plugin, its lifecycle state and the waits
//! on it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use serde::Serialize;

use crate::{
    config::PlatformConfig,
    loader::{Instance, UnloadReport},
    manifest::Manifest,
};

/// An entry's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Known from its manifest; nothing loaded.
    Registered,
    /// A load is in progress.
    Loading,
    /// Loaded and started.
    Running,
    /// Running, but every worker is stuck in a call past its timeout: no call can be taken.
    /// Sends answer 503 (retryable); the supervisor replaces it (`on_hang = "restart"`).
    Hung,
    /// Being stopped.
    Stopping,
    /// Was running; stopped and unloaded.
    Unloaded,
    /// The last load or start failed; the error is on the entry.
    Failed,
}

impl EntryState {
    /// The lowercase name used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Registered => "registered",
            EntryState::Loading => "loading",
            EntryState::Running => "running",
            EntryState::Hung => "hung",
            EntryState::Stopping => "stopping",
            EntryState::Unloaded => "unloaded",
            EntryState::Failed => "failed",
        }
    }
}

/// What the registry knows of a plugin.
pub struct Entry {
    pub(super) manifest: Manifest,
    pub(super) manifest_path: PathBuf,
    /// Its manifest's `enable_when` held at discovery.
    pub(super) enabled_by_env: bool,
    /// Its `[platforms.<id>]` table; a config reload replaces it.
    pub(super) platform: std::sync::RwLock<Option<Arc<PlatformConfig>>>,
    pub(crate) slot: Mutex<Slot>,
    pub(super) changed: Condvar,
    /// Bumped on every change of the slot, for async waiters.
    pub(super) changed_async: tokio::sync::watch::Sender<u64>,
    /// One reload at a time.
    pub(crate) reload_lock: Mutex<()>,
    /// Reload counts and the last outcome.
    pub(crate) reloads: Mutex<crate::reload::ReloadStats>,
}

pub(crate) struct Slot {
    pub(crate) state: EntryState,
    /// New calls wait at the door (a reload is swapping instances).
    pub(crate) held: bool,
    /// The generation of the last successful load (0: never loaded).
    pub(crate) generation: u64,
    pub(crate) instance: Option<Arc<Instance>>,
    pub(crate) error: Option<String>,
    /// The last load's failure, shared with the callers that waited on it.
    pub(crate) failure: Option<Arc<super::LoadFailure>>,
    pub(crate) last_unload: Option<UnloadReport>,
    /// When the last load failed; uses within [`RETRY_FAILED_LOAD_AFTER`] get its error.
    pub(crate) failed_at: Option<Instant>,
    /// Loads attempted, and the time they took (load + start), in seconds.
    pub(super) loads: u64,
    pub(super) load_seconds: f64,
    pub(super) last_load_ms: Option<f64>,
    /// Of that, the library load (copy, dlopen, checks); the rest is `start`.
    pub(super) last_open_ms: Option<f64>,
}

/// An entry's status: what `plugin list`, `/api/platforms` and `status` show.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PlatformStatus {
    /// The platform id.
    pub id: String,
    /// The display name.
    pub name: String,
    /// The loaded library's version while loaded, the manifest's otherwise.
    pub version: String,
    /// The manifest's version.
    pub manifest_version: String,
    /// The plugin ABI version the manifest declares.
    pub api: u32,
    /// The lifecycle state.
    pub state: EntryState,
    /// The generation serving (or last served); 0 when never loaded.
    pub generation: u64,
    /// Whether a `[platforms.<id>]` table or the manifest's `enable_when` enables it.
    pub configured: bool,
    /// The last load or start error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The manifest's description.
    pub description: String,
    /// The manifest's emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// Loads attempted so far.
    pub loads: u64,
    /// Time spent in loads and starts so far, in seconds.
    pub load_seconds: f64,
    /// How long the last load and start took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_load_ms: Option<f64>,
    /// Of `last_load_ms`, the library load (shadow copy, dlopen, checks); the rest is `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_open_ms: Option<f64>,
    /// Calls running or queued on the serving instance.
    pub in_flight: usize,
}

impl Entry {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest file.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The plugin folder.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// Whether the platform is configured (table or `enable_when`).
    pub fn configured(&self) -> bool {
        self.enabled_by_env || self.platform_config().is_some()
    }

    /// The platform's `[platforms.<id>]` table, if any.
    pub fn platform_config(&self) -> Option<Arc<PlatformConfig>> {
        self.platform
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the platform's table (a config reload); the next start uses it.
    pub(crate) fn set_platform_config(&self, platform: Option<PlatformConfig>) {
        *self.platform.write().unwrap_or_else(|e| e.into_inner()) = platform.map(Arc::new);
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiter, blocking and async, after a change of the slot.
    pub(crate) fn notify(&self) {
        self.changed.notify_all();
        self.changed_async.send_modify(|n| *n += 1);
    }

    /// Blocks while a load, stop or swap is in progress; returns the slot then.
    pub(crate) fn wait_settled(&self) -> MutexGuard<'_, Slot> {
        let mut slot = self.lock();
        while slot.held || matches!(slot.state, EntryState::Loading | EntryState::Stopping) {
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot
    }

    /// Whether new calls are held at the door by a reload.
    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    /// Waits, without blocking a thread, until no reload holds calls at the door.
    pub async fn wait_released(&self) {
        let mut rx = self.changed_async.subscribe();
        let _ = rx.wait_for(|_| !self.is_held()).await;
    }

    /// Reload counts and the last outcome.
    pub fn reload_stats(&self) -> crate::reload::ReloadStats {
        self.reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The entry's status, without loading anything.
    pub fn status(&self) -> PlatformStatus {
        let slot = self.lock();
        let version = match &slot.instance {
            Some(instance) => instance.plugin_version().to_owned(),
            None => self.manifest.version.clone(),
        };
        let state = match &slot.instance {
            Some(instance) if slot.state == EntryState::Running && instance.is_hung() => {
                EntryState::Hung
            }
            _ => slot.state,
        };
        PlatformStatus {
            id: self.manifest.id.clone(),
            name: self.manifest.name.clone(),
            version,
            manifest_version: self.manifest.version.clone(),
            api: self.manifest.api,
            state,
            generation: slot.generation,
            configured: self.configured(),
            error: slot.error.clone(),
            description: self.manifest.description.clone(),
            emoji: self.manifest.emoji.clone(),
            manifest_path: self.manifest_path.clone(),
            loads: slot.loads,
            load_seconds: slot.load_seconds,
            last_load_ms: slot.last_load_ms,
            last_open_ms: slot.last_open_ms,
            in_flight: slot.instance.as_ref().map_or(0, |i| i.in_flight()),
        }
    }

    /// The serving instance, if running and not held by a reload; never loads.
    pub fn running(&self) -> Option<Arc<Instance>> {
        let slot = self.lock();
        match slot.state {
            EntryState::Running if !slot.held => slot.instance.clone(),
            _ => None,
        }
    }

    /// The last unload's report, if any.
    pub fn last_unload(&self) -> Option<UnloadReport> {
        self.lock().last_unload.clone()
    }
}
