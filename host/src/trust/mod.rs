//! Strict modes: what the gateway refuses to load, whatever `trust` says (as sshd's
//! `StrictModes`). A plugin library is native code with every right of the gateway's user, so
//! nobody else may be able to change it, or what the gateway takes for it:
//!
//! - the library file, the manifest and the plugin folder must not be writable by group or
//!   others, nor owned by another user than the gateway's or root;
//! - the library's own folder likewise (a group member could swap the file in it);
//! - every folder above them must not be writable by others without the sticky bit (`/tmp`'s
//!   1777 is fine: others cannot rename what they do not own there), nor owned by another user
//!   than the gateway's or root;
//! - the library, symlinks resolved, must lie in its plugin folder, a `[plugins] library_dirs`
//!   folder, or a folder the operator names in `[plugins] trusted_dirs`.
//!
//! The library file is checked on the descriptor the load copies it from
//! ([`crate::loader::Library::open_vetted`]), so what is checked is what is loaded. Each
//! refusal names the path, its mode or owner, and the fix.
//!
//! [`lock`]: `trust = "lock"`, libraries pinned by hash in `hermes.lock`; [`signed`]:
//! `trust = "signed"`, minisign signatures by trusted keys.

pub mod lock;
pub mod signed;

use std::{
    fs::Metadata,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Why a file or folder may not be trusted; names the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {} {reason}; refused (as sshd's StrictModes): {fix}", path.display())]
pub struct Untrusted {
    /// `library`, `manifest`, `plugin folder`, `folder`.
    pub what: &'static str,
    /// The path.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
    /// What to do.
    pub fix: String,
}

/// The gateway's effective user.
fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks one file or folder's metadata: not writable by group or others (with `above`, a
/// folder above the plugin's: writable by its group, or by others with the sticky bit, is
/// fine), owned by this user or root.
fn check_meta(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    above: bool,
) -> Result<(), Untrusted> {
    let mode = meta.permissions().mode() & 0o7777;
    let sticky = above && meta.is_dir() && mode & 0o1000 != 0;
    let writable = if above { mode & 0o002 } else { mode & 0o022 };
    if writable != 0 && !sticky {
        let by = if mode & 0o022 == 0o022 {
            "group and others"
        } else if mode & 0o002 != 0 {
            "others"
        } else {
            "its group"
        };
        return Err(Untrusted {
            what,
            path: path.to_owned(),
            reason: format!("is writable by {by} (mode {mode:04o})"),
            fix: format!("`chmod go-w {}`", path.display()),
        });
    }
    let owner = meta.uid();
    if owner != 0 && owner != me() {
        return Err(Untrusted {
            what,
            path: path.to_owned(),
            reason: format!(
                "is owned by uid {owner}, neither this gateway's user (uid {}) nor root",
                me()
            ),
            fix: format!("`chown` it to uid {} or root", me()),
        });
    }
    Ok(())
}

/// Checks the library file's own metadata (as read from the descriptor the load copies).
pub fn check_library(path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
    check_meta("library", path, meta, false)
}

/// Checks a plugin's manifest, its folder and the folders above it.
pub fn check_plugin(manifest: &Path, dir: &Path) -> Result<(), Untrusted> {
    let meta = |p: &Path| {
        std::fs::metadata(p).map_err(|e| Untrusted {
            what: "path",
            path: p.to_owned(),
            reason: format!("cannot be read ({e})"),
            fix: "check that it exists".to_owned(),
        })
    };
    check_meta("manifest", manifest, &meta(manifest)?, false)?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    check_meta("plugin folder", &dir, &meta(&dir)?, false)?;
    check_above(&dir)
}

/// Checks the folder holding a library (symlinks resolved), and the folders above it.
pub fn check_library_folder(library: &Path) -> Result<(), Untrusted> {
    let Some(folder) = library.parent() else {
        return Ok(());
    };
    let meta = std::fs::metadata(folder).map_err(|e| Untrusted {
        what: "folder",
        path: folder.to_owned(),
        reason: format!("cannot be read ({e})"),
        fix: "check that it exists".to_owned(),
    })?;
    check_meta("library folder", folder, &meta, false)?;
    check_above(folder)
}

/// Every folder above `path` (itself resolved): not writable by others without the sticky bit,
/// owned by this user or root. Group-writable folders above are allowed (`/usr/local` is
/// `root:staff 2775` on Debian); the plugin's and the library's own folders are not.
fn check_above(path: &Path) -> Result<(), Untrusted> {
    for folder in path.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(folder) {
            check_meta("folder", folder, &meta, true)?;
        }
    }
    Ok(())
}

/// Refuses a library that, symlinks resolved, lies outside `roots` (the plugin folder, the
/// library dirs, the trusted dirs).
pub fn check_within(library: &Path, resolved: &Path, roots: &[PathBuf]) -> Result<(), Untrusted> {
    let inside = roots.iter().any(|root| {
        root.canonicalize()
            .is_ok_and(|root| resolved.starts_with(root))
    });
    if inside {
        return Ok(());
    }
    Err(Untrusted {
        what: "library",
        path: library.to_owned(),
        reason: format!(
            "resolves to {}, outside the plugin folder and [plugins] library_dirs",
            resolved.display()
        ),
        fix: format!(
            "name its folder in [plugins] trusted_dirs (\"{}\") if it is meant to be loaded",
            resolved.parent().unwrap_or(resolved).display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn writable_files_and_folders_are_refused_naming_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("p");
        fs::create_dir(&plugin).unwrap();
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
        let manifest = plugin.join("plugin.toml");
        fs::write(&manifest, "").unwrap();
        fs::set_permissions(&manifest, fs::Permissions::from_mode(0o644)).unwrap();
        check_plugin(&manifest, &plugin).unwrap();

        fs::set_permissions(&manifest, fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_plugin(&manifest, &plugin).unwrap_err();
        assert_eq!(e.what, "manifest");
        assert!(
            e.to_string()
                .contains("writable by group and others (mode 0666)"),
            "{e}"
        );
        fs::set_permissions(&manifest, fs::Permissions::from_mode(0o644)).unwrap();

        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_plugin(&manifest, &plugin).unwrap_err();
        assert_eq!(
            (e.what, e.path.clone()),
            ("plugin folder", plugin.canonicalize().unwrap())
        );
        // A sticky, world-writable folder above (as /tmp) is fine; without the sticky bit not.
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        check_plugin(&manifest, &plugin).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_plugin(&manifest, &plugin).unwrap_err();
        assert_eq!(e.what, "folder");
        assert!(e.to_string().contains("(mode 0777)"), "{e}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_library_outside_the_roots_is_refused_unless_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (inside, outside) = (dir.path().join("in"), dir.path().join("out"));
        fs::create_dir(&inside).unwrap();
        fs::create_dir(&outside).unwrap();
        let lib = outside.join("libx.so");
        fs::write(&lib, "").unwrap();
        let link = inside.join("libx.so");
        std::os::unix::fs::symlink(&lib, &link).unwrap();
        let resolved = link.canonicalize().unwrap();
        let e = check_within(&link, &resolved, std::slice::from_ref(&inside)).unwrap_err();
        assert!(e.to_string().contains("outside the plugin folder"), "{e}");
        assert!(e.fix.contains("trusted_dirs"), "{e}");
        check_within(&link, &resolved, &[inside, outside]).unwrap();
    }
}
