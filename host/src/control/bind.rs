//! Binding the control socket without touching anything but its own path.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
};

/// Why the control socket could not be bound. Each names the path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A server answers on the socket.
    #[error("another hermes-host server is running on the control socket {}", .0.display())]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is never deleted.
    #[error("control socket {}: a {} is at that path; refusing to replace it (remove it, or set `server.control_socket` to another path)", .path.display(), .kind)]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
    },
    /// The folder is writable by others without the sticky bit: anyone could swap the socket.
    #[error("control socket folder {} is writable by others without the sticky bit (mode {mode:o}); choose a private folder for `server.control_socket`", .path.display())]
    UnsafeFolder {
        /// The folder.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A file system call failed.
    #[error("control socket {}: {what}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Binds the control socket (mode 0600). It touches nothing but its own path:
/// - a missing folder is created 0700; an existing one is never changed, and one that others
///   can write without the sticky bit is refused;
/// - a socket at the path is replaced only once a connection attempt is refused (nobody
///   listens); a live one is [`BindError::InUse`]; any other file is refused, never deleted.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, BindError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
    let io = |what, source| BindError::Io {
        path: path.to_owned(),
        what,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) => {
                let mode = meta.permissions().mode();
                if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                    return Err(BindError::UnsafeFolder {
                        path: dir.to_owned(),
                        mode: mode & 0o7777,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io("creating its folder", e))?;
            }
            Err(e) => return Err(io("reading its folder", e)),
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
                tracing::info!(socket = %path.display(), "replaced a stale control socket (nobody listened on it)");
            }
            Err(e) => return Err(io("checking whether a server listens", e)),
        },
        Ok(meta) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
                kind: crate::manifest::describe_file_type(meta.file_type()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading the path", e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600", e))?;
    Ok(listener)
}
