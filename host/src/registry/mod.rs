//! The registry: every installed plugin, known from its manifest, loaded only when used.
//!
//! Discovery reads `plugin.toml` files and nothing else: listing, status and
//! [`Registry::is_registered`] never open a library. [`Registry::instance`] loads a platform
//! on first use; concurrent first users wait for the one load in progress and share its result.
//! A failed load leaves its error on the entry and touches nothing else.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hermes_plugin_api::abi::ABI_VERSION;

use crate::{
    config::PlatformConfig,
    loader::{StartOptions, UnloadReport},
    manifest::Manifest,
    probe::Prober,
    quarantine::Quarantine,
};

mod discover;
mod entry;
mod error;
mod instance;
mod open;
mod options;
pub mod reload;
mod status;
mod tables;

pub use entry::Entry;
pub(crate) use entry::{Admission, Exclusive, Settled};
pub use error::{DiscoveryProblem, LoadFailure, RegistryError};
pub use instance::{Instance, Library, StartFailure, Stopped};
pub use options::RegistryOptions;
pub use status::{EntryState, PlatformStatus};

pub use entry::RETRY_FAILED_LOAD_AFTER;

/// Every installed plugin, by id.
pub struct Registry {
    entries: BTreeMap<String, Arc<Entry>>,
    problems: Vec<DiscoveryProblem>,
    options: RegistryOptions,
    loads: AtomicU64,
    /// This process's folder under the shadow root, claimed at the first load.
    shadow: std::sync::OnceLock<Result<crate::loader::ShadowDir, Arc<std::io::Error>>>,
    prober: Option<Prober>,
    quarantine: Option<Quarantine>,
    /// Plugins whose library may differ from hermes.lock's pin, with a warning: watched ones
    /// under `serve --dev`.
    lock_lenient: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Registry {
    /// Under `serve --dev`, a watched plugin's rebuilt library loads though hermes.lock pins
    /// another (`on`), or not.
    pub fn set_lock_lenient(&self, id: &str, on: bool) {
        let mut lenient = self.lock_lenient.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            lenient.insert(id.to_owned());
        } else {
            lenient.remove(id);
        }
    }

    fn lock_lenient(&self, id: &str) -> bool {
        self.lock_lenient
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// What discovery could not register.
    pub fn problems(&self) -> &[DiscoveryProblem] {
        &self.problems
    }

    /// Whether a plugin with this id is installed.
    pub fn is_registered(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// One entry.
    pub fn entry(&self, id: &str) -> Result<&Arc<Entry>, RegistryError> {
        self.entries
            .get(id)
            .ok_or_else(|| RegistryError::Unknown(id.to_owned()))
    }

    /// Every entry, by id.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    /// Every entry's status, by id. Loads nothing.
    pub fn list(&self) -> Vec<PlatformStatus> {
        self.entries.values().map(|e| e.status()).collect()
    }

    /// How many libraries this registry has loaded so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// This process's own folder of shadow copies under `shadow_dir`; the first call claims it
    /// and removes the folders that dead processes left (see [`crate::loader::ShadowDir`]).
    pub fn shadow_dir(&self) -> Result<&Path, LoadFailure> {
        let root = &self.options.shadow_dir;
        self.shadow
            .get_or_init(|| match crate::loader::ShadowDir::claim(root) {
                Ok((dir, removed)) => {
                    if !removed.is_empty() {
                        tracing::info!(
                            shadow_dir = %root.display(),
                            removed = removed.len(),
                            "removed shadow copies left by processes that died"
                        );
                    }
                    Ok(dir)
                }
                Err(e) => Err(Arc::new(e)),
            })
            .as_ref()
            .map(|dir| dir.path())
            .map_err(|e| LoadFailure::ShadowDir {
                dir: root.clone(),
                source: Arc::clone(e),
            })
    }

    /// Where the entry's library is: the plugin folder first, then the library dirs.
    pub fn resolve_library(&self, entry: &Entry) -> Result<PathBuf, LoadFailure> {
        let file = entry.manifest().library_file_name();
        let mut looked = Vec::new();
        for dir in std::iter::once(entry.dir())
            .chain(self.options.library_dirs.iter().map(PathBuf::as_path))
        {
            let candidate = dir.join(&file);
            if let Ok(meta) = std::fs::metadata(&candidate) {
                use std::os::unix::fs::FileTypeExt as _;
                let kind = meta.file_type();
                let what = if kind.is_file() {
                    return Ok(candidate);
                } else if kind.is_dir() {
                    "a folder"
                } else if kind.is_fifo() {
                    "a FIFO"
                } else if kind.is_char_device() || kind.is_block_device() {
                    "a device"
                } else {
                    "a socket"
                };
                return Err(LoadFailure::NotAFile {
                    path: candidate,
                    kind: what,
                });
            }
            looked.push(dir.to_owned());
        }
        Err(LoadFailure::NotFound { file, looked })
    }

    /// The running instance of `id`, loading and starting it if it is not running. Concurrent
    /// callers share one load; callers that waited on a load that failed get its error.
    pub fn instance(&self, id: &str) -> Result<Arc<Instance>, RegistryError> {
        let entry = self.entry(id)?;
        let generation = match entry.admit_blocking() {
            Admission::Serving(instance) => return Ok(instance),
            Admission::Failed(cause) => {
                return Err(RegistryError::LoadFailed {
                    id: id.to_owned(),
                    cause,
                });
            }
            Admission::Load { generation } => generation,
        };
        let started = Instant::now();
        let result = self.load_and_start(entry, generation);
        entry
            .load_finished(generation, started.elapsed(), result)
            .map_err(|cause| RegistryError::LoadFailed {
                id: id.to_owned(),
                cause,
            })
    }

    /// How to start an instance of `entry` as `generation`.
    pub(crate) fn start_options(
        &self,
        entry: &Entry,
        generation: u64,
        state: Option<crate::message::PluginState>,
    ) -> StartOptions {
        let platform = entry.platform_config().unwrap_or_default();
        StartOptions {
            platform: entry.manifest().id.clone(),
            generation,
            config_json: self.plugin_json(entry, &platform),
            sink: Arc::clone(&self.options.sink),
            workers: platform.workers,
            call_timeout: platform.call_timeout,
            max_queue: platform.max_queue,
            state,
            data_dir: self.data_dir(&entry.manifest().id),
            max_attachment_bytes: crate::message::limits::ATTACHMENT_BYTES,
        }
    }

    /// `<state_dir>/data/<id>`, the platform's own folder, made when missing; `None` (logged)
    /// without a state dir or when it cannot be made: the plugin then runs without one.
    fn data_dir(&self, id: &str) -> Option<PathBuf> {
        let dir = self.options.state_dir.as_ref()?.join("data").join(id);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(platform = id, dir = %dir.display(), error = %e, "cannot make the platform's data folder; it starts without one");
                None
            }
        }
    }

    /// `table`'s plugin config as the plugin gets it (its `path_keys` resolved).
    pub fn plugin_json(&self, entry: &Entry, table: &PlatformConfig) -> String {
        entry
            .manifest()
            .plugin_json(&table.plugin, &self.options.config_dir)
    }

    /// How long one call into `entry`'s plugin may take.
    pub fn call_timeout(&self, entry: &Entry) -> Duration {
        entry
            .platform_config()
            .map_or(crate::config::DEFAULT_CALL_TIMEOUT, |p| p.call_timeout)
    }

    /// Counts a load (for `loads()`).
    pub(crate) fn count_load(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    fn load_and_start(&self, entry: &Entry, generation: u64) -> Result<Arc<Instance>, LoadFailure> {
        let started = Instant::now();
        if entry.manifest().api != ABI_VERSION {
            return Err(api_mismatch(entry.manifest(), entry.manifest_path()));
        }
        require_env(entry.manifest(), entry.manifest_path())?;
        if entry.platform_config().is_none() && entry.enabled_by_env() {
            // Its table comes from the environment; a bad variable is this load's failure.
            let id = &entry.manifest().id;
            crate::config::from_env(id).map_err(|source| LoadFailure::EnvConfig {
                platform: id.clone(),
                source,
            })?;
        }
        let path = self.resolve_library(entry)?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let open::Opened {
            library,
            marker: _marker,
            probed,
        } = self.open_platform(entry, &entry.platform_config().unwrap_or_default(), &path)?;
        let opened = started.elapsed();
        entry.opened(opened);
        match library.start(self.start_options(entry, generation, None)) {
            Ok(instance) => {
                tracing::info!(
                    platform = %entry.manifest().id,
                    generation,
                    version = instance.plugin_version(),
                    pid = instance.pid(),
                    load_ms = opened.as_secs_f64() * 1e3,
                    probe_ms = probed.map(|p| p.ms),
                    start_ms = (started.elapsed() - opened).as_secs_f64() * 1e3,
                    "platform started"
                );
                Ok(Arc::new(instance))
            }
            Err(failure) => {
                let report = failure.library.unload();
                if !report.clean() {
                    tracing::warn!(platform = %entry.manifest().id, ?report, "failed start left the library resident");
                }
                Err(LoadFailure::Start {
                    platform: entry.manifest().id.clone(),
                    source: failure.error,
                })
            }
        }
    }

    /// Stops and unloads `id` if it is running; `Ok(None)` when it was not, `StopFailed` when
    /// a call or the plugin's `stop` did not return in time (the entry is `failed` then).
    pub fn unload(&self, id: &str) -> Result<Option<UnloadReport>, RegistryError> {
        let entry = self.entry(id)?;
        let owner = entry.exclusive_blocking();
        entry.settled_blocking(&owner);
        let Some(instance) = entry.begin_stop(&owner) else {
            return Ok(None);
        };
        match instance.stop(false, self.call_timeout(entry)) {
            // An isolated platform whose process died: nothing is left to stop or unload.
            Err(crate::loader::StopError::Crashed { exit }) => {
                let report = UnloadReport {
                    shadow_path: PathBuf::new(),
                    closed: true,
                    unmapped: Some(true),
                    shadow_deleted: false,
                    detail: Some(format!("the plugin's process had died: {exit}")),
                };
                entry.stopped(&owner, Ok(report.clone()));
                Ok(Some(report))
            }
            Ok(stopped) => {
                if let Some(e) = &stopped.error {
                    tracing::warn!(platform = id, error = %e, "plugin reported an error while stopping");
                }
                let report = stopped.library.unload();
                entry.stopped(&owner, Ok(report.clone()));
                Ok(Some(report))
            }
            Err(e) => {
                entry.stopped(&owner, Err(format!("stop: {e}")));
                if e == crate::loader::StopError::Busy {
                    // Its library is unloaded once the running call returns.
                    instance.retire();
                    instance::reap(instance);
                }
                Err(RegistryError::StopFailed {
                    id: id.to_owned(),
                    cause: e,
                })
            }
        }
    }

    /// The running instance of `id`, if it is running; never loads.
    pub fn running(&self, id: &str) -> Option<Arc<Instance>> {
        self.entries.get(id)?.running()
    }

    /// Stops and unloads every running platform, in reverse id order.
    pub fn shutdown(&self) -> Vec<(String, Option<UnloadReport>)> {
        self.entries
            .keys()
            .rev()
            .filter_map(|id| self.unload(id).ok().map(|r| (id.clone(), r)))
            .filter(|(_, r)| r.is_some())
            .collect()
    }

    /// Shadow copies mapped in this process that no running instance is serving from: libraries
    /// an unload could not unmap (a hung call, a pinned thread-local).
    pub fn resident_stale_libraries(&self) -> Option<Vec<PathBuf>> {
        let dir = self.options.shadow_dir.canonicalize().ok();
        let Some(dir) = dir else {
            // No shadow dir yet: nothing was ever loaded.
            return Some(Vec::new());
        };
        let serving: Vec<PathBuf> = self
            .entries
            .values()
            .filter_map(|e| e.running())
            .filter_map(|i| i.shadow_path().map(Path::to_owned))
            .collect();
        let mapped = crate::loader::mapped_under(&dir)?;
        Some(
            mapped
                .into_iter()
                .filter(|p| !serving.contains(p))
                .collect(),
        )
    }
}

/// Refuses a start while variables the manifest's `required_env` names are unset or empty.
fn require_env(manifest: &Manifest, path: &Path) -> Result<(), LoadFailure> {
    let names = manifest.missing_env();
    match names.is_empty() {
        true => Ok(()),
        false => Err(LoadFailure::MissingEnv {
            manifest: path.to_owned(),
            names,
        }),
    }
}

fn api_mismatch(manifest: &Manifest, path: &Path) -> LoadFailure {
    LoadFailure::ApiMismatch {
        manifest: path.to_owned(),
        declared: manifest.api,
    }
}
