//! Opening a platform's library, the one way every load goes (first use, start-up, reload, hot
//! reload, config validation, `plugin check`): a fresh shadow copy; its content hash; the
//! quarantine ([`crate::quarantine`]), which refuses a library that took the process down
//! before; the probe ([`crate::probe`]), which opens the same copy in a child first; a marker
//! held until the load (and the caller's `start`) is over; then the host's own `dlopen` of that
//! same copy.

use std::path::Path;

use super::{Entry, LoadFailure, Registry};
use crate::{
    loader::Library,
    probe::{ContentHash, Probed},
    quarantine::Marker,
};

/// A library opened for `entry`, with the marker to keep until its first call has returned.
pub(crate) struct Opened {
    pub(crate) library: Library,
    /// Held while the library is loaded and started; dropping it clears the marker.
    pub(crate) marker: Option<Marker>,
    /// The probe that vetted it (`None` without a probe program).
    pub(crate) probed: Option<Probed>,
}

impl Registry {
    /// Opens `path` for `entry` (see the module docs).
    pub(crate) fn open_library(&self, entry: &Entry, path: &Path) -> Result<Opened, LoadFailure> {
        let id = entry.manifest().id.as_str();
        let mut marker = None;
        let mut probed = None;
        let mut alone = false;
        let library = Library::open_vetted(path, self.shadow_dir()?, |copy| {
            let hash =
                ContentHash::of_file(copy).map_err(|e| crate::loader::LoadError::io(copy, e))?;
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
                        tracing::warn!(platform = id, error = %e, "cannot read the quarantine list; loading without it")
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
                        tracing::warn!(platform = id, error = %e, "cannot write a load marker; a crash in this load would not be quarantined")
                    }
                }
            }
            Ok(())
        })?;
        Ok(Opened {
            library,
            marker,
            probed,
        })
    }
}
