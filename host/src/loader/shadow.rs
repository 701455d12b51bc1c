//! Shadow copies: each load reads its library from a fresh file of its own.
//!
//! `dlopen` keys loaded objects by path and inode, so loading a rebuilt library from the same
//! path can hand back the old, still-mapped code. A fresh copy per load gets a new path and a
//! new inode; it is deleted after `dlclose`.
//!
//! Each process keeps its copies in a folder of its own under the shadow root
//! ([`ShadowDir`]), holding an exclusive `flock` on a `.lock` file inside it for its whole
//! life. A process that claims its folder removes every other folder whose lock it can take:
//! their owners are dead (a crash, `kill -9`), and so the copies they left (tens of MB each)
//! do not pile up. A lock, unlike a pid, cannot be mistaken for a reused pid.

use std::{
    fs::{self, DirBuilder, File},
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

/// This process's own folder of shadow copies, locked while it lives and removed when dropped.
#[derive(Debug)]
pub struct ShadowDir {
    path: PathBuf,
    /// Holds the `flock` that tells other processes this folder is in use.
    _lock: File,
}

/// The lock file in each process's folder.
const LOCK_FILE: &str = ".lock";

impl ShadowDir {
    /// Makes this process's folder under `root` (created 0700 if missing), then removes the
    /// folders of dead processes; returns the folder and what was removed.
    pub fn claim(root: &Path) -> io::Result<(ShadowDir, Vec<PathBuf>)> {
        DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        let root = root.canonicalize()?;
        let path = tempfile::Builder::new()
            .prefix(&format!("p{}-", std::process::id()))
            .tempdir_in(&root)?
            .keep();
        let lock = File::create(path.join(LOCK_FILE))?;
        lock.lock()?;
        let mut removed = Vec::new();
        for entry in fs::read_dir(&root)?.flatten() {
            let other = entry.path();
            if other == path {
                continue;
            }
            let dead = match entry.file_type() {
                // A process's folder: its owner is dead when its lock is free. A folder
                // without a lock file was being made, or is a `plugin check` scratch folder.
                Ok(t) if t.is_dir() => {
                    File::open(other.join(LOCK_FILE)).is_ok_and(|f| f.try_lock().is_ok())
                }
                // A loose copy of an older layout: nobody owns it.
                Ok(t) if t.is_file() => true,
                _ => false,
            };
            let gone = if other.is_dir() {
                dead && fs::remove_dir_all(&other).is_ok()
            } else {
                dead && fs::remove_file(&other).is_ok()
            };
            if gone {
                removed.push(other);
            }
        }
        Ok((ShadowDir { path, _lock: lock }, removed))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ShadowDir {
    fn drop(&mut self) {
        // Copies still mapped (a hung call) are only unlinked: their mappings stay valid.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A private copy of a plugin library, loaded instead of the original.
#[derive(Debug)]
pub(crate) struct ShadowCopy {
    path: PathBuf,
}

impl ShadowCopy {
    /// Copies `file` (opened from `source`) to a new, uniquely named file in `dir` (created
    /// 0700 if missing).
    pub(crate) fn create(mut file: File, source: &Path, dir: &Path) -> io::Result<ShadowCopy> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        // The kernel reports mapped files by their real path; keep ours comparable.
        let dir = dir.canonicalize()?;
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let suffix = source
            .extension()
            .and_then(|s| s.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{stem}-"))
            .suffix(&suffix)
            .tempfile_in(&dir)?;
        io::copy(&mut file, tmp.as_file_mut())?;
        let (_, path) = tmp.keep().map_err(|e| e.error)?;
        Ok(ShadowCopy { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the copy (after `dlclose`; unlinking a mapped file is harmless, too).
    pub(crate) fn remove(self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
