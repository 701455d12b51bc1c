//! `plugin.toml`: what the host knows of a plugin before loading it.
//!
//! ```toml
//! [plugin]
//! id = "irc"              # ^[a-z0-9][a-z0-9_-]{0,63}$, the platform name
//! name = "IRC"
//! kind = "platform"
//! version = "0.3.1"
//! api = 1                 # plugin ABI version; checked before dlopen
//! library = "hermes_irc"  # -> libhermes_irc.so in the plugin folder, then the library dirs
//! ```
//!
//! Optional: `description`, `emoji`, `required_env`, `optional_env`, `install_hint`,
//! `[plugin.enable_when]` with `env_all` / `env_any` (env var names), and `[capabilities]`
//! ([`crate::capabilities`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name of a manifest inside a plugin folder.
pub(crate) const MANIFEST_FILE: &str = "plugin.toml";

/// A plugin's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin id, which is also its platform name.
    pub id: String,
    /// A label for status displays.
    pub name: String,
    /// What it is; only `platform` for now.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// The plugin's version, as its author declares it.
    pub version: String,
    /// The plugin ABI version it was built for.
    pub api: u32,
    /// The crate's library name, without `lib` prefix or file extension.
    pub library: String,
    /// One line on what it does.
    #[serde(default)]
    pub description: String,
    /// An emoji for status displays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// Environment variables it needs.
    #[serde(default)]
    pub required_env: Vec<String>,
    /// Environment variables it reads when set.
    #[serde(default)]
    pub optional_env: Vec<String>,
    /// How to install or build it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_hint: Option<String>,
    /// When it counts as configured without a `[platforms.<id>]` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_when: Option<EnableWhen>,
    /// Keys of its config whose values are file paths: a relative one is resolved against the
    /// folder of hermes.toml before the plugin sees it, as the host's own paths are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_keys: Vec<String>,
    /// It receives messages over connections it keeps open (a listener, a session to a
    /// server): while it runs the gateway is never idle, and idle unload is refused for it
    /// (unloading would stop its inbound until the next send).
    #[serde(default)]
    pub inbound: bool,
    /// `[capabilities]` (a table of its own beside `[plugin]`): what the platform carries.
    #[serde(default, skip_deserializing)]
    pub capabilities: crate::capabilities::Capabilities,
    /// `[limits]`: the platform's rate budget and retries by default
    /// ([`crate::delivery::policy`]); a platform's `delivery` table overrides them.
    #[serde(default, skip_deserializing, skip_serializing_if = "is_default")]
    pub limits: crate::delivery::policy::Limits,
    /// `[sandbox]`: what its child may touch under `isolation = "process"`
    /// ([`crate::sandbox::grants`]).
    #[serde(default, skip_deserializing, skip_serializing_if = "Grants::is_empty")]
    pub sandbox: Grants,
}

use crate::sandbox::grants::Grants;

fn is_default(limits: &crate::delivery::policy::Limits) -> bool {
    *limits == crate::delivery::policy::Limits::default()
}

fn default_kind() -> String {
    "platform".to_owned()
}

/// A declarative auto-enable rule, decided without loading the library.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableWhen {
    /// Every one of these env vars is set and not empty.
    #[serde(default)]
    pub env_all: Vec<String>,
    /// At least one of these env vars is set and not empty.
    #[serde(default)]
    pub env_any: Vec<String>,
}

impl EnableWhen {
    /// Whether the rule holds in this process's environment. An empty rule never holds.
    pub fn holds(&self) -> bool {
        let set = |name: &String| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if self.env_all.is_empty() && self.env_any.is_empty() {
            return false;
        }
        self.env_all.iter().all(set) && (self.env_any.is_empty() || self.env_any.iter().any(set))
    }
}

/// A manifest that could not be read, naming the file and, where known, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", path.display(), field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// The offending field (`plugin.id`...), when one is to blame.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    plugin: Manifest,
    #[serde(default)]
    capabilities: crate::capabilities::Capabilities,
    #[serde(default)]
    limits: crate::delivery::policy::Limits,
    #[serde(default)]
    sandbox: Grants,
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = read_small(path).map_err(|e| ManifestError {
            path: path.to_owned(),
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Like [`Manifest::load`], but `None` when there is no file (a folder without a manifest).
    pub fn load_if_present(path: &Path) -> Option<Result<Manifest, ManifestError>> {
        match read_small(path) {
            Ok(text) => Some(Self::parse(&text, path)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                None
            }
            Err(e) => Some(Err(ManifestError {
                path: path.to_owned(),
                field: None,
                message: format!("cannot read: {e}"),
            })),
        }
    }

    /// Parses and checks manifest text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let file: ManifestFile = toml::from_str(text).map_err(|e| ManifestError {
            path: path.to_owned(),
            field: None,
            message: crate::toml_error::describe(text, &e),
        })?;
        let mut manifest = file.plugin;
        manifest.capabilities = file.capabilities;
        manifest.limits = file.limits;
        manifest.sandbox = file.sandbox;
        manifest
            .sandbox
            .check_absolute()
            .map_err(|(key, message)| ManifestError {
                path: path.to_owned(),
                field: Some(format!("sandbox.{key}")),
                message,
            })?;
        manifest
            .limits
            .check()
            .map_err(|(key, message)| ManifestError {
                path: path.to_owned(),
                field: Some(format!("limits.{key}")),
                message,
            })?;
        let bad = |field: &str, message: String| ManifestError {
            path: path.to_owned(),
            field: Some(format!("plugin.{field}")),
            message,
        };
        if !valid_id(&manifest.id) {
            return Err(bad(
                "id",
                format!("{:?} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$", manifest.id),
            ));
        }
        if manifest.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if manifest.kind != "platform" {
            return Err(bad(
                "kind",
                format!("{:?} is not a known kind (platform)", manifest.kind),
            ));
        }
        if manifest.version.trim().is_empty() {
            return Err(bad("version", "must not be empty".into()));
        }
        let library_ok = !manifest.library.is_empty()
            && manifest.library.len() <= 128
            && manifest
                .library
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !library_ok {
            return Err(bad(
                "library",
                format!(
                    "{:?} must be a crate library name (letters, digits, _ and -)",
                    manifest.library
                ),
            ));
        }
        let no_rule = EnableWhen::default();
        let rule = manifest.enable_when.as_ref().unwrap_or(&no_rule);
        for (field, names) in [
            ("required_env", &manifest.required_env),
            ("optional_env", &manifest.optional_env),
            ("enable_when.env_all", &rule.env_all),
            ("enable_when.env_any", &rule.env_any),
        ] {
            if let Some(name) = names.iter().find(|n| !valid_env_name(n)) {
                return Err(bad(
                    field,
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        Ok(manifest)
    }

    /// The plugin's part of a platform's table (`plugin`) as the JSON the ABI passes, with the
    /// values of `path_keys` that are relative paths resolved against `config_dir`.
    pub fn plugin_json(&self, plugin: &toml::Table, config_dir: &Path) -> String {
        let mut plugin = plugin.clone();
        for key in &self.path_keys {
            if let Some(toml::Value::String(path)) = plugin.get_mut(key)
                && Path::new(path.as_str()).is_relative()
            {
                *path = config_dir.join(&*path).display().to_string();
            }
        }
        serde_json::to_string(&plugin).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The `required_env` variables that are unset or empty in this process.
    pub fn missing_env(&self) -> Vec<String> {
        self.required_env
            .iter()
            .filter(|n| std::env::var_os(n).is_none_or(|v| v.is_empty()))
            .cloned()
            .collect()
    }

    /// Every environment variable the manifest names (`required_env`, `optional_env`,
    /// `enable_when`): what an isolated child's environment may hold besides the basics.
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        let rule = self.enable_when.as_ref();
        self.required_env
            .iter()
            .chain(&self.optional_env)
            .chain(
                rule.into_iter()
                    .flat_map(|r| r.env_all.iter().chain(&r.env_any)),
            )
            .map(String::as_str)
    }

    /// The library's file name on this OS (`libhermes_irc.so` on Linux).
    pub fn library_file_name(&self) -> String {
        format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            self.library,
            std::env::consts::DLL_SUFFIX
        )
    }
}

/// The largest manifest read; a bigger file is an error, not a memory hog.
pub(crate) const MANIFEST_LIMIT: u64 = 64 * 1024;

/// Reads a manifest: open and read, without the `stat` that `fs::read_to_string` makes for a
/// size hint (start-up reads hundreds of these; every system call shows).
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever. The
    // type is then checked on the open file (no extra path lookup): only a regular file is read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::other(format!(
            "not a regular file (a {})",
            describe_file_type(kind)
        )));
    }
    let mut bytes = Vec::with_capacity(1024);
    file.take(MANIFEST_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MANIFEST_LIMIT {
        return Err(std::io::Error::other(format!(
            "larger than {MANIFEST_LIMIT} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8"))
}

/// A file type's name for messages: "FIFO", "folder", ...
pub(crate) fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_dir() {
        "folder"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "device"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "file"
    }
}

/// Whether `id` is a valid plugin id: `^[a-z0-9][a-z0-9_-]{0,63}$`.
pub(crate) fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests;
