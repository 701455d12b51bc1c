//! Crash-loop quarantine: a library that took the process down while it was being loaded or
//! started is refused at the next start, instead of taking it down again.
//!
//! Before the host opens a library, it writes a marker under `<state_dir>/loading/`: the
//! platform, the library's content hash and path, held with an exclusive `flock` for as long as
//! the load and the plugin's `start` run, and removed after. A marker whose lock can be taken
//! belongs to a process that died in between: [`Quarantine::sweep`] (run at discovery) turns it
//! into a record in `<state_dir>/quarantine.json`. A quarantined library is refused, with the
//! reason, until its file changes (another content hash) or `hermes-host plugin unquarantine
//! <id>` lifts it. A persisted hot-reload watch or an eager start can therefore never turn one
//! bad file into a crash loop; the other platforms start normally.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::probe::ContentHash;

/// One quarantined library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The platform.
    pub platform: String,
    /// The library's content hash (hex).
    pub hash: String,
    /// The library file.
    pub library: PathBuf,
    /// When the process died with it loading (ms since the Unix epoch, when the load began).
    pub at_ms: i64,
    /// The process that died.
    pub pid: u32,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quarantined: process {} died while loading or starting {} (content {}); it stays refused until the file changes or `hermes-host plugin unquarantine {}`",
            self.pid,
            self.library.display(),
            &self.hash[..12.min(self.hash.len())],
            self.platform
        )
    }
}

/// The quarantine of one state folder.
#[derive(Debug, Clone)]
pub struct Quarantine {
    state_dir: PathBuf,
}

/// A load in progress: its marker, removed when dropped.
#[derive(Debug)]
pub struct Marker {
    path: PathBuf,
    _lock: File,
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Quarantine {
    /// The quarantine kept in `state_dir`.
    pub fn new(state_dir: &Path) -> Quarantine {
        Quarantine {
            state_dir: state_dir.to_owned(),
        }
    }

    fn markers(&self) -> PathBuf {
        self.state_dir.join("loading")
    }

    fn list_path(&self) -> PathBuf {
        self.state_dir.join("quarantine.json")
    }

    /// Marks a load of `library` (content `hash`) for `platform` as in progress.
    pub fn begin(&self, platform: &str, library: &Path, hash: ContentHash) -> io::Result<Marker> {
        let dir = self.markers();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let record = Quarantined {
            platform: platform.to_owned(),
            hash: hash.to_string(),
            library: library.to_owned(),
            at_ms: hermes_plugin_api::now_ms(),
            pid: std::process::id(),
        };
        let file = tempfile::Builder::new()
            .prefix(&format!("{platform}."))
            .suffix(".json")
            .tempfile_in(&dir)?;
        file.as_file().lock()?;
        // No fsync: the marker must outlive this process, not the machine, and the page
        // cache outlives a crashed process.
        file.as_file()
            .write_all(serde_json::to_string(&record)?.as_bytes())?;
        let (lock, path) = file.keep().map_err(|e| e.error)?;
        Ok(Marker { path, _lock: lock })
    }

    /// Turns the markers of dead processes into quarantine records; returns the new records.
    pub fn sweep(&self) -> io::Result<Vec<Quarantined>> {
        let read = match fs::read_dir(self.markers()) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for path in read.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            // Held: a live process is loading. Free: its process died mid-load.
            if file.try_lock().is_err() {
                continue;
            }
            let record = fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str::<Quarantined>(&text).ok());
            let _ = fs::remove_file(&path);
            // A marker cut short by the crash itself names nothing to quarantine.
            if let Some(record) = record {
                found.push(record);
            }
        }
        if !found.is_empty() {
            let mut list = self.list()?;
            for record in &found {
                list.insert(record.platform.clone(), record.clone());
            }
            self.write(&list)?;
        }
        Ok(found)
    }

    /// Every quarantined library, by platform.
    pub fn list(&self) -> io::Result<BTreeMap<String, Quarantined>> {
        match fs::read_to_string(self.list_path()) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.list_path().display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    /// The record that refuses `platform`'s library with content `hash`, if any. A record for
    /// another content (the file changed) refuses nothing.
    pub fn check(&self, platform: &str, hash: ContentHash) -> io::Result<Option<Quarantined>> {
        let hash = hash.to_string();
        Ok(self
            .list()?
            .remove(platform)
            .filter(|record| record.hash == hash))
    }

    /// Lifts `platform`'s quarantine; the record lifted, if there was one.
    pub fn lift(&self, platform: &str) -> io::Result<Option<Quarantined>> {
        let mut list = self.list()?;
        let lifted = list.remove(platform);
        if lifted.is_some() {
            self.write(&list)?;
        }
        Ok(lifted)
    }

    /// Writes the list whole: a temporary file renamed over the old one.
    fn write(&self, list: &BTreeMap<String, Quarantined>) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)?;
        let mut file = tempfile::Builder::new()
            .prefix(".quarantine.")
            .tempfile_in(&self.state_dir)?;
        file.write_all(serde_json::to_string_pretty(list)?.as_bytes())?;
        file.as_file().sync_data()?;
        file.persist(self.list_path()).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_left_by_a_dead_load_quarantines_that_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::new(dir.path());
        let library = Path::new("/plugins/x/libx.so");
        let (bad, changed) = (ContentHash(7), ContentHash(8));

        // A load in progress: its marker is held, so a sweep leaves it alone.
        let marker = quarantine.begin("x", library, bad).unwrap();
        assert!(quarantine.sweep().unwrap().is_empty());
        drop(marker);
        assert_eq!(fs::read_dir(quarantine.markers()).unwrap().count(), 0);

        // A marker nobody holds: its process died mid-load.
        let record = Quarantined {
            platform: "x".into(),
            hash: bad.to_string(),
            library: library.to_owned(),
            at_ms: 1,
            pid: 42,
        };
        fs::write(
            quarantine.markers().join("x.dead.json"),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();
        assert_eq!(quarantine.sweep().unwrap(), vec![record.clone()]);
        assert_eq!(quarantine.check("x", bad).unwrap(), Some(record.clone()));
        assert_eq!(
            quarantine.check("x", changed).unwrap(),
            None,
            "the file changed"
        );
        assert_eq!(quarantine.check("y", bad).unwrap(), None);
        assert!(record.to_string().contains("plugin unquarantine x"));

        assert_eq!(quarantine.lift("x").unwrap(), Some(record));
        assert_eq!(quarantine.check("x", bad).unwrap(), None);
        assert_eq!(quarantine.lift("x").unwrap(), None);
    }
}
