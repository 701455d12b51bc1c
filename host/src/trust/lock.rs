//! `[plugins] trust = "lock"`: `hermes.lock`, beside hermes.toml, pins each plugin's library by
//! its SHA-256 (written by `hermes-host plugin lock`). Every open (first use, reload, hot
//! reload, `plugin check`) hashes the very copy it is about to `dlopen` and refuses a library
//! that is not pinned, or whose hash differs, in one line naming both hashes and the command
//! that accepts it. The file is read at each open, so `plugin lock` takes effect at once.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The lock file's name, beside hermes.toml.
pub const FILE: &str = "hermes.lock";

/// What `[plugins] trust` asks of a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// The strict modes only.
    #[default]
    Any,
    /// Pinned in hermes.lock, too.
    Lock,
    /// Signed by a trusted key ([`super::signed`]), and pinned.
    Signed,
}

/// One plugin's pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The library's file name.
    pub library: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The manifest's version when it was pinned.
    pub version: String,
}

/// `hermes.lock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Pins by plugin id.
    #[serde(default)]
    pub plugins: BTreeMap<String, Pin>,
}

impl LockFile {
    /// Reads `path`; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<LockFile, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the lock to `path` whole (a new file renamed over the old).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "# Written by `hermes-host plugin lock`: the SHA-256 of each plugin's library, checked at\n# every load under `[plugins] trust = \"lock\"`. Review a change before accepting it.\n\n{}",
            toml::to_string(self).map_err(std::io::Error::other)?
        );
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    }
}

/// The SHA-256 (hex) and size of the file at `path`.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    let mut size = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, size))
}

/// Checks the copy `copy` of platform `id`'s library against `lock`: the refusal's one line.
pub fn verify(lock: &Path, id: &str, copy: &Path) -> Result<(), String> {
    let pins = LockFile::read(lock)?;
    let (hash, _) = sha256_file(copy).map_err(|e| format!("{}: {e}", copy.display()))?;
    match pins.plugins.get(id) {
        Some(pin) if pin.sha256 == hash => Ok(()),
        Some(pin) => Err(format!(
            "platform `{id}`: its library has sha256 {hash}, {} pins {}; refused (trust = \"lock\"): `hermes-host plugin lock {id}` accepts it",
            lock.display(),
            pin.sha256
        )),
        None => Err(format!(
            "platform `{id}`: its library (sha256 {hash}) is not pinned in {}; refused (trust = \"lock\"): `hermes-host plugin lock {id}` pins it",
            lock.display()
        )),
    }
}

/// The lock file for a config in `config_dir`.
pub fn path_for(config_dir: &Path) -> PathBuf {
    config_dir.join(FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_library_passes_and_a_changed_one_is_refused_naming_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(FILE);
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, "one").unwrap();
        let e = verify(&lock, "x", &lib).unwrap_err();
        assert!(
            e.contains("is not pinned") && e.contains("plugin lock x"),
            "{e}"
        );
        let (sha256, size) = sha256_file(&lib).unwrap();
        let mut file = LockFile::default();
        file.plugins.insert(
            "x".into(),
            Pin {
                library: "libx.so".into(),
                sha256: sha256.clone(),
                size,
                version: "1".into(),
            },
        );
        file.write(&lock).unwrap();
        verify(&lock, "x", &lib).unwrap();
        std::fs::write(&lib, "two").unwrap();
        let e = verify(&lock, "x", &lib).unwrap_err();
        assert!(e.contains(&sha256) && e.contains("accepts it"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}
