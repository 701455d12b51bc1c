//! Opening a platform's library, the one way every load goes (first use, start-up, reload, hot
//! reload, config validation, `plugin check`): the strict modes ([`crate::trust`]); a fresh
//! shadow copy of the file as checked; its content hash; the
//! quarantine ([`crate::quarantine`]), which refuses a library that took the process down
//! before; the probe ([`crate::probe`]), which opens the same copy in a child first; a marker
//! held until the load (and the caller's `start`) is over; then the host's own `dlopen` of that
//! same copy.

use std::{path::Path, sync::Arc};

use super::{Entry, LoadFailure, Registry};
use crate::{
    config::{Isolation, PlatformConfig},
    isolate::{ChildError, RemoteLibrary, Spawn},
    loader::Library,
    probe::{ContentHash, Probed},
    quarantine::Marker,
};

/// The variables an isolated child gets besides those its manifest names.
const CHILD_BASE_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// A library opened for `entry`, with the marker to keep until its first call has returned.
pub(crate) struct Opened<L = Library> {
    pub(crate) library: L,
    /// Held while the library is loaded and started; dropping it clears the marker.
    pub(crate) marker: Option<Marker>,
    /// The probe that vetted it (`None` without a probe program).
    pub(crate) probed: Option<Probed>,
}

impl Registry {
    /// The strict modes ([`crate::trust`]) for `entry`'s manifest, folder and library `path`
    /// (the library file itself is checked on the descriptor it is copied from).
    fn strict_modes(&self, entry: &Entry, path: &Path) -> Result<(), LoadFailure> {
        crate::trust::check_plugin(entry.manifest_path(), entry.dir())?;
        let resolved = path
            .canonicalize()
            .map_err(|e| crate::loader::LoadError::io(path, e))?;
        let roots: Vec<std::path::PathBuf> = std::iter::once(entry.dir().to_owned())
            .chain(self.options.library_dirs.iter().cloned())
            .chain(self.options.trusted_dirs.iter().cloned())
            .collect();
        crate::trust::check_within(path, &resolved, &roots)?;
        crate::trust::check_library_folder(&resolved)?;
        Ok(())
    }

    /// `trust = "signed"`: `file` (the copy of `library` about to be opened) must be signed by
    /// a trusted key; `"lock"` (and `"signed"`): it must be the library hermes.lock pins for
    /// `id` (a watched plugin under `serve --dev` is loaded with a warning instead).
    fn pinned(&self, id: &str, library: &Path, file: &Path) -> Result<(), LoadFailure> {
        if let Some(keys) = &self.options.signing_keys {
            crate::trust::signed::verify(id, library, file, keys).map_err(LoadFailure::Unpinned)?;
        }
        let Some(lock) = &self.options.lock_file else {
            return Ok(());
        };
        match crate::trust::lock::verify(lock, id, file) {
            Ok(()) => Ok(()),
            Err(refusal) if self.lock_lenient(id) => {
                tracing::warn!(
                    platform = id,
                    "{refusal} (serve --dev: a watched plugin is loaded anyway)"
                );
                Ok(())
            }
            Err(refusal) => Err(LoadFailure::Unpinned(refusal)),
        }
    }

    /// Opens `path` for `entry` where `table` says it runs: in this process (see
    /// [`Registry::open_library`]) or in a child of its own (`isolation = "process"`), which
    /// needs neither probe nor quarantine: a crash there ends the child alone.
    pub(crate) fn open_platform(
        &self,
        entry: &Entry,
        table: &PlatformConfig,
        path: &Path,
    ) -> Result<Opened<super::Library>, LoadFailure> {
        if table.isolation == Isolation::InProcess {
            let opened = self.open_library(entry, path)?;
            return Ok(Opened {
                library: super::Library::InProcess(opened.library),
                marker: opened.marker,
                probed: opened.probed,
            });
        }
        // The child opens the library by its path: checked here, before it is spawned.
        self.strict_modes(entry, path)?;
        let meta = std::fs::metadata(path).map_err(|e| crate::loader::LoadError::io(path, e))?;
        crate::trust::check_library(path, &meta)?;
        self.pinned(&entry.manifest().id, path, path)?;
        let manifest = entry.manifest();
        let program = self.options.child_program.clone().ok_or_else(|| ChildError {
            platform: manifest.id.clone(),
            message: "process isolation runs the hermes-host binary, and none was found beside this program".into(),
        })?;
        let env = CHILD_BASE_ENV
            .into_iter()
            .chain(manifest.env_names())
            .filter_map(|name| Some((name.to_owned(), std::env::var(name).ok()?)))
            .collect();
        let spawn = Spawn {
            program,
            platform: manifest.id.clone(),
            env,
            memory_limit_mb: table.memory_limit_mb,
            sandbox: self.sandbox_policy(entry, table, path),
            shadow_root: self.options.shadow_dir.clone(),
        };
        let library = RemoteLibrary::open(&spawn, Arc::clone(&self.options.sink), path)?;
        Ok(Opened {
            library: super::Library::Process(library),
            marker: None,
            probed: None,
        })
    }

    /// What `entry`'s child may touch ([`crate::sandbox::grants`]).
    fn sandbox_policy(
        &self,
        entry: &Entry,
        table: &PlatformConfig,
        library: &Path,
    ) -> crate::sandbox::Policy {
        let manifest = entry.manifest();
        let config: serde_json::Value =
            serde_json::from_str(&self.plugin_json(entry, table)).unwrap_or_default();
        let data_dir = self.data_dir(&manifest.id);
        let place = crate::sandbox::grants::Place {
            library,
            plugin_dir: entry.dir(),
            data_dir: data_dir.as_deref(),
            config: &config,
            path_keys: &manifest.path_keys,
        };
        let operator = table.grants.clone().resolve(&self.options.config_dir);
        crate::sandbox::grants::policy(table.sandbox, &place, &manifest.sandbox, &operator)
    }

    /// Opens `path` for `entry` in this process (see the module docs).
    pub(crate) fn open_library(&self, entry: &Entry, path: &Path) -> Result<Opened, LoadFailure> {
        let id = entry.manifest().id.as_str();
        let mut marker = None;
        let mut probed = None;
        let mut alone = false;
        let mut content = None;
        self.strict_modes(entry, path)?;
        let inspect = |meta: &std::fs::Metadata| -> Result<(), LoadFailure> {
            Ok(crate::trust::check_library(path, meta)?)
        };
        let library = Library::open_vetted(path, self.shadow_dir()?, inspect, |copy| {
            let hash =
                ContentHash::of_file(copy).map_err(|e| crate::loader::LoadError::io(copy, e))?;
            content = Some(hash);
            self.pinned(id, path, copy)?;
            if let Some(quarantine) = &self.quarantine {
                match quarantine.check(id, hash) {
                    Ok(Some(record)) if !record.suspect => {
                        return Err(LoadFailure::Quarantined(record));
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(
                            platform = id,
                            "loading alone: the process died last time with this library and others loading"
                        );
                        alone = true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(platform = id, error = %e, "cannot read the quarantine list; loading without it");
                    }
                }
            }
            if let Some(prober) = &self.prober {
                probed = Some(prober.vet(copy, hash)?);
            }
            if let Some(quarantine) = &self.quarantine {
                match quarantine.begin(id, path, hash, alone) {
                    Ok(m) => marker = Some(m),
                    Err(e) => {
                        tracing::warn!(platform = id, error = %e, "cannot write a load marker; a crash in this load would not be quarantined");
                    }
                }
            }
            Ok(())
        })?;
        if let Some(hash) = content {
            library.name_in_crash_reports(&format!(
                "platform={id} content={hash} library={}",
                path.display()
            ));
        }
        Ok(Opened {
            library,
            marker,
            probed,
        })
    }
}
