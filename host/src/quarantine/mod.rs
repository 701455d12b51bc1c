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
//!
//! Loads run in parallel (eager and background starts), so a process may die with several
//! markers held, and only one of them is to blame. Then none is quarantined: each becomes a
//! *suspect*, which the next start loads alone, with every other load waiting (a process-wide
//! lock, shared by ordinary loads, exclusive for suspects). A crash during a suspect's lone load
//! leaves one marker, which quarantines it; a suspect that loads and starts is cleared.
//!
//! A crash after the start, in a plugin's code, is named by the fatal-signal handler
//! ([`crate::loader::fatal`]) in `<state_dir>/crash.last`; the next start logs it, and the same
//! library (platform and content) named by two such crashes in a row, without a clean exit
//! between, is quarantined too (`quarantine::crash`).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::probe::ContentHash;

mod crash;

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
    /// The process died with other loads in progress too: this one is loaded alone next time,
    /// and quarantined only if the process dies during that load.
    #[serde(default)]
    pub suspect: bool,
    /// Why, when not a load: a fatal signal in its code twice in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = self
            .reason
            .clone()
            .unwrap_or_else(|| format!("process {} died while loading or starting", self.pid));
        write!(
            f,
            "quarantined: {why} {} (content {}); it stays refused until the file changes or `hermes-host plugin unquarantine {}`",
            self.library.display(),
            &self.hash[..12.min(self.hash.len())],
            self.platform
        )
    }
}

/// The quarantine of one state folder.
#[derive(Debug, Clone)]
pub(crate) struct Quarantine {
    state_dir: PathBuf,
}

/// Ordinary loads share it; a suspect's load takes it alone.
static LOADS: RwLock<()> = RwLock::new(());

/// A load in progress: its marker, removed when dropped (a suspect's record too: it did not
/// take the process down).
#[derive(Debug)]
pub(crate) struct Marker {
    path: PathBuf,
    _lock: File,
    cleared_suspect: Option<(Quarantine, String)>,
    _turn: LoadTurn,
}

#[derive(Debug)]
enum LoadTurn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some((quarantine, platform)) = self.cleared_suspect.take() {
            match quarantine.list() {
                Ok(mut list) if list.get(&platform).is_some_and(|r| r.suspect) => {
                    list.remove(&platform);
                    if let Err(e) = quarantine.write(&list) {
                        tracing::warn!(platform, error = %e, "cannot clear a suspect");
                    }
                }
                _ => {}
            }
        }
    }
}

impl Quarantine {
    /// The quarantine kept in `state_dir`.
    pub(crate) fn new(state_dir: &Path) -> Quarantine {
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

    /// Marks a load of `library` (content `hash`) for `platform` as in progress; `alone` (a
    /// suspect) waits until no other load runs and keeps them all waiting until it is dropped.
    pub(crate) fn begin(
        &self,
        platform: &str,
        library: &Path,
        hash: ContentHash,
        alone: bool,
    ) -> io::Result<Marker> {
        let turn = if alone {
            LoadTurn::Alone(LOADS.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            LoadTurn::Shared(LOADS.read().unwrap_or_else(|e| e.into_inner()))
        };
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
            suspect: false,
            reason: None,
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
        Ok(Marker {
            path,
            _lock: lock,
            cleared_suspect: alone.then(|| (self.clone(), platform.to_owned())),
            _turn: turn,
        })
    }

    /// Turns the markers of dead processes into quarantine records (suspects where a process
    /// left several); returns the new records.
    pub(crate) fn sweep(&self) -> io::Result<Vec<Quarantined>> {
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
        // One marker of a dead process names the culprit; several name suspects.
        let pids: Vec<u32> = found.iter().map(|r| r.pid).collect();
        for record in &mut found {
            record.suspect = pids.iter().filter(|&&p| p == record.pid).count() > 1;
        }
        if !found.is_empty() {
            let mut list = self.list()?;
            for record in &found {
                let known = list.get(&record.platform).is_some_and(|r| !r.suspect);
                if !(record.suspect && known) {
                    list.insert(record.platform.clone(), record.clone());
                }
            }
            self.write(&list)?;
        }
        Ok(found)
    }

    /// Every quarantined library, by platform.
    pub(crate) fn list(&self) -> io::Result<BTreeMap<String, Quarantined>> {
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

    /// The record for `platform`'s library with content `hash`, if any: a quarantine (refuse
    /// it) or a suspect (load it alone). A record for another content (the file changed) is
    /// not returned.
    pub(crate) fn check(
        &self,
        platform: &str,
        hash: ContentHash,
    ) -> io::Result<Option<Quarantined>> {
        let hash = hash.to_string();
        Ok(self
            .list()?
            .remove(platform)
            .filter(|record| record.hash == hash))
    }

    /// Lifts `platform`'s quarantine; the record lifted, if there was one.
    pub(crate) fn lift(&self, platform: &str) -> io::Result<Option<Quarantined>> {
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
        let marker = quarantine.begin("x", library, bad, false).unwrap();
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
            suspect: false,
            reason: None,
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

    #[test]
    fn a_process_that_died_with_several_loads_leaves_suspects_loaded_alone() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::new(dir.path());
        fs::create_dir_all(quarantine.markers()).unwrap();
        for (platform, hash) in [("a", 1u128), ("b", 2)] {
            let record = Quarantined {
                platform: platform.into(),
                hash: ContentHash(hash).to_string(),
                library: PathBuf::from(format!("/p/{platform}.so")),
                at_ms: 1,
                pid: 7,
                suspect: false,
                reason: None,
            };
            fs::write(
                quarantine.markers().join(format!("{platform}.dead.json")),
                serde_json::to_string(&record).unwrap(),
            )
            .unwrap();
        }
        let found = quarantine.sweep().unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|r| r.suspect), "{found:?}");
        let a = quarantine.check("a", ContentHash(1)).unwrap().unwrap();
        assert!(a.suspect, "a suspect is not refused, only loaded alone");

        // A suspect's load that ends with the process alive clears it.
        let marker = quarantine
            .begin("a", Path::new("/p/a.so"), ContentHash(1), true)
            .unwrap();
        assert!(
            LOADS.try_read().is_err(),
            "every other load waits while a suspect loads"
        );
        drop(marker);
        assert!(LOADS.try_read().is_ok());
        assert_eq!(quarantine.check("a", ContentHash(1)).unwrap(), None);
        assert!(
            quarantine
                .check("b", ContentHash(2))
                .unwrap()
                .unwrap()
                .suspect
        );
    }
}
