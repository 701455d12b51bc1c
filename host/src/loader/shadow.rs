//! Shadow copies: each load reads its library from a fresh file of its own.
//!
//! `dlopen` keys loaded objects by path and inode, so loading a rebuilt library from the same
//! path can hand back the old, still-mapped code. A fresh copy per load gets a new path and a
//! new inode; it is deleted after `dlclose`.

use std::{
    fs::{self, DirBuilder, File},
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

/// A private copy of a plugin library, loaded instead of the original.
#[derive(Debug)]
pub(crate) struct ShadowCopy {
    path: PathBuf,
}

impl ShadowCopy {
    /// Copies `source` to a new, uniquely named file in `dir` (created 0700 if missing).
    pub(crate) fn create(source: &Path, dir: &Path) -> io::Result<ShadowCopy> {
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
        let mut src = File::open(source)?;
        io::copy(&mut src, tmp.as_file_mut())?;
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
