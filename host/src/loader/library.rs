//! Opening a plugin library: shadow copy, ELF check, `dlopen`, then the header and layout
//! checks of [`super::header`]; one-off calls; unloading.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libloading::os::unix::{Library as DlHandle, RTLD_LOCAL, RTLD_NOW};

use super::{
    callbacks::CallbackContext,
    elf,
    error::{CallError, LoadError},
    maps,
    shadow::ShadowCopy,
    worker,
};

/// A plugin library that passed every check, loaded from its own shadow copy.
///
/// Cheap to share: calls hold a reference, and [`Library::unload`] only unmaps it once nothing
/// else does. A `Library` dropped without `unload` stays mapped (its code might still be
/// referenced), and says so in the log.
pub struct Library {
    pub(crate) inner: Arc<LoadedLibrary>,
}

pub(crate) struct LoadedLibrary {
    /// `Some` until `unload` closes it.
    handle: Option<DlHandle>,
    /// Point into the library; valid while `handle` is open, i.e. for this value's life.
    tables: super::header::Tables,
    plugin_version: String,
    source: PathBuf,
    shadow: Option<ShadowCopy>,
    shadow_path: PathBuf,
    /// Contexts lent to instances of this library; they must outlive its code.
    pub(crate) contexts: Mutex<Vec<Arc<CallbackContext>>>,
    /// The process's threads before the plugin first started: a thread started since then
    /// and still alive after its stop is named when the library stays resident.
    pub(crate) threads_before_start: Mutex<Option<std::collections::HashSet<u32>>>,
    /// Where a fatal signal in its code finds whose it is (see [`super::fatal`]).
    pub(crate) crash_slot: Mutex<Option<super::fatal::CrashSlot>>,
}

// SAFETY: the vtable pointer refers to immutable statics of the library, which stays loaded
// for as long as this value lives; the functions behind it are called from any thread.
unsafe impl Send for LoadedLibrary {}
// SAFETY: as for `Send`: shared access only reads the immutable vtable.
unsafe impl Sync for LoadedLibrary {}

impl LoadedLibrary {
    pub(crate) fn vtable(&self) -> super::header::Fns<'_> {
        // SAFETY: both point at statics of the library (or `v1_1` is null), which is open for
        // as long as `self` exists: only `unload`, which consumes `self`, closes it.
        unsafe {
            super::header::Fns {
                base: &*self.tables.base,
                v1_1: self.tables.v1_1.as_ref(),
            }
        }
    }

    /// The plugin API level the library was built for (0 for 1.0, 1 for 1.1).
    pub(crate) fn level(&self) -> u32 {
        self.tables.level
    }
}

impl Drop for LoadedLibrary {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Dropped without `unload`: something may still run its code (a detached worker,
            // a plugin thread). Leaving it mapped is safe; unmapping it might not be.
            std::mem::forget(handle);
            tracing::warn!(library = %self.source.display(), "plugin library left mapped");
        }
        if let Some(shadow) = self.shadow.take() {
            let _ = shadow.remove();
        }
    }
}

/// What unloading did, checked against the process's real mappings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnloadReport {
    /// The shadow copy that was loaded.
    pub shadow_path: PathBuf,
    /// Whether `dlclose` ran (it does not when a call or thread still holds the library).
    pub closed: bool,
    /// Whether the copy is gone from `/proc/self/maps`; `None` where that cannot be read.
    pub unmapped: Option<bool>,
    /// Whether the shadow file was deleted.
    pub shadow_deleted: bool,
    /// Why something above did not happen.
    pub detail: Option<String>,
}

impl UnloadReport {
    /// True when the library is closed and really gone from memory (or that cannot be seen).
    pub fn clean(&self) -> bool {
        self.closed && self.unmapped != Some(false) && self.shadow_deleted
    }
}

impl Library {
    /// Loads `source` from a fresh shadow copy in `shadow_dir` and checks that it is a plugin
    /// this host can call: ELF sanity, the entry symbol, magic, ABI version, header size and
    /// the vtable's layout (with fresh checking globals, so nothing is cached between loads).
    pub fn open(source: &Path, shadow_dir: &Path) -> Result<Library, LoadError> {
        Self::open_vetted(source, shadow_dir, |_| Ok(()), |_| Ok(()))
    }

    /// [`Library::open`], with `inspect` run on the metadata of the source as opened (the
    /// descriptor the copy is then read from, so what it accepts is what is loaded: the
    /// registry's strict modes), and `vet` on the shadow copy before it is opened: the copy is
    /// opened only if `vet` accepts it (the registry probes it in a child process there), and
    /// it is the very file `vet` saw.
    pub fn open_vetted<E: From<LoadError>>(
        source: &Path,
        shadow_dir: &Path,
        inspect: impl FnOnce(&std::fs::Metadata) -> Result<(), E>,
        vet: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Library, E> {
        let file = std::fs::File::open(source).map_err(|e| LoadError::io(source, e))?;
        let meta = file.metadata().map_err(|e| LoadError::io(source, e))?;
        if !meta.is_file() {
            return Err(LoadError::NotALibrary {
                path: source.to_owned(),
                reason: "not a regular file".into(),
            }
            .into());
        }
        inspect(&meta)?;
        let shadow =
            ShadowCopy::create(file, source, shadow_dir).map_err(|e| LoadError::Shadow {
                dir: shadow_dir.to_owned(),
                source: e,
            })?;
        let shadow_path = shadow.path().to_owned();
        if let Err(e) = vet(&shadow_path) {
            let _ = shadow.remove();
            return Err(e);
        }
        match Self::open_copy(source, &shadow_path) {
            Ok((handle, tables, plugin_version)) => Ok(Library {
                inner: Arc::new(LoadedLibrary {
                    handle: Some(handle),
                    tables,
                    plugin_version,
                    source: source.to_owned(),
                    shadow: Some(shadow),
                    shadow_path,
                    contexts: Mutex::new(Vec::new()),
                    threads_before_start: Mutex::new(None),
                    crash_slot: Mutex::new(None),
                }),
            }),
            Err(e) => {
                let _ = shadow.remove();
                Err(e.into())
            }
        }
    }

    /// Opens `copy` where it is, with every load-time check, and leaves it loaded: for the
    /// probe's child process, which exits right after. The plugin's version when sound.
    pub fn check_in_place(copy: &Path) -> Result<String, LoadError> {
        let (handle, _tables, version) = Self::open_copy(copy, copy)?;
        // The process exits next: closing would only run the library's destructors for nothing.
        std::mem::forget(handle);
        Ok(version)
    }

    fn open_copy(
        source: &Path,
        copy: &Path,
    ) -> Result<(DlHandle, super::header::Tables, String), LoadError> {
        let not_a_library = |reason: String| LoadError::NotALibrary {
            path: source.to_owned(),
            reason,
        };
        elf::check_shared_object(copy)
            .map_err(|e| LoadError::io(copy, e))?
            .map_err(not_a_library)?;

        // SAFETY: loading runs the library's initialisers. The file passed the ELF check (so
        // every mapped page is backed by the file) and is a private copy nobody else writes.
        // RTLD_LOCAL keeps its symbols out of the global namespace; RTLD_NOW resolves them
        // all now, so a missing dependency fails here rather than at a later call.
        let handle = unsafe { DlHandle::open(Some(copy), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
            LoadError::Dlopen {
                path: source.to_owned(),
                message: e.to_string(),
            }
        })?;

        let checked = super::header::check(source, &handle);
        match checked {
            Ok((tables, version)) => Ok((handle, tables, version)),
            Err(e) => {
                // Nothing of the library ran but its initialisers and the entry function,
                // which only returns a static's address: closing it now is safe.
                let _ = handle.close();
                Err(e)
            }
        }
    }

    /// The plugin API level the library was built for (0 for 1.0, 1 for 1.1).
    pub fn level(&self) -> u32 {
        self.inner.level()
    }

    /// The plugin crate's own version, as compiled into the library.
    pub fn plugin_version(&self) -> &str {
        &self.inner.plugin_version
    }

    /// Names this library in the report of a fatal signal in its code (or on a thread that
    /// calls it): `description` says whose it is (platform, file, content).
    pub fn name_in_crash_reports(&self, description: &str) {
        let Some((start, end)) = maps::range_of(&self.inner.shadow_path) else {
            return;
        };
        let slot = super::fatal::CrashSlot::claim(start, end, description);
        *self
            .inner
            .crash_slot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = slot;
    }

    /// The shadow copy actually mapped.
    pub fn shadow_path(&self) -> &Path {
        &self.inner.shadow_path
    }

    /// Runs the plugin's `validate_config` on a host thread joined before this returns.
    pub fn validate_config(&self, config_json: &str, timeout: Duration) -> Result<(), CallError> {
        let json = config_json.to_owned();
        worker::run_once(&self.inner, "validate_config", timeout, move |vtable| {
            // SAFETY: `validate_config` borrows the JSON for the call only.
            let result = unsafe { (vtable.base.validate_config)(json.as_str().into()) };
            result.into_result().map_err(|e| e.into_string())
        })?
        .map_err(|message| CallError::Plugin {
            call: "validate_config",
            message,
            retryable: false,
            retry_after_ms: None,
        })
    }

    /// Closes the library if nothing else holds it, deletes its shadow copy, and checks the
    /// process's mappings to say whether the copy is really gone.
    pub fn unload(self) -> UnloadReport {
        let started = Instant::now();
        let shadow_path = self.inner.shadow_path.clone();
        let mut loaded = match Arc::try_unwrap(self.inner) {
            Ok(loaded) => loaded,
            Err(shared) => {
                drop(shared);
                return UnloadReport {
                    unmapped: maps::is_mapped(&shadow_path).map(|m| !m),
                    shadow_path,
                    closed: false,
                    shadow_deleted: false,
                    detail: Some("still in use by a call that has not returned".into()),
                };
            }
        };
        let mut detail = None;
        let closed = match loaded.handle.take().map(DlHandle::close) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                detail = Some(format!("dlclose: {e}"));
                false
            }
            None => false,
        };
        if closed {
            // Its addresses may belong to another library from now on.
            loaded
                .crash_slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        // Only now, with the code gone, may the contexts lent to plugin threads die.
        loaded
            .contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let shadow_deleted = match loaded.shadow.take().map(ShadowCopy::remove) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                detail.get_or_insert(format!("deleting the shadow copy: {e}"));
                false
            }
            None => false,
        };
        let unmapped = maps::is_mapped(&shadow_path).map(|m| !m);
        if unmapped == Some(false) {
            let before = loaded
                .threads_before_start
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let alive = before
                .zip(maps::thread_ids())
                .map(|(before, now)| maps::describe_threads(now.difference(&before).copied()))
                .unwrap_or_default();
            detail.get_or_insert(if alive.is_empty() {
                "dlclose returned but the copy is still mapped (a thread-local destructor \
                 or another reference pins it)"
                    .into()
            } else {
                format!(
                    "dlclose returned but the copy is still mapped; threads started since the \
                     plugin started are still alive and may run its code or hold its \
                     thread-locals: {}",
                    alive.join(", ")
                )
            });
        }
        tracing::debug!(path = %shadow_path.display(), ?unmapped, elapsed = ?started.elapsed(), "unloaded");
        UnloadReport {
            shadow_path,
            closed,
            unmapped,
            shadow_deleted,
            detail,
        }
    }
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("source", &self.inner.source)
            .field("shadow", &self.inner.shadow_path)
            .field("version", &self.inner.plugin_version)
            .finish()
    }
}
