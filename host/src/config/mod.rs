//! `hermes.toml`: the gateway's configuration.
//!
//! Every key, its default and its meaning are listed in docs/config.md. Relative
//! paths are relative to the folder of the config file (the working directory when there is no
//! file). Unknown keys are errors, except inside `[platforms.<id>]`, whose keys beyond the
//! host's own (`start`, `call_timeout_ms`, `idle_unload_secs`, `workers`, `max_queue`,
//! `on_hang`) belong to the plugin.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub mod paths;
mod platform;
mod senders;
mod server;

use platform::platform_config;
mod delivery;
pub use delivery::DeliveryConfig;
use delivery::RawDelivery;
pub use platform::{
    DEFAULT_CALL_TIMEOUT, EnvConfigError, Isolation, OnHang, PlatformConfig, StartMode,
    effective_table, env_prefix, from_env,
};
pub use senders::Senders;
pub use server::{MAX_WORKER_THREADS, MIN_TOKEN_CHARS, ServerConfig};
use server::{RawServer, server_config};

/// A config that could not be read, naming the file and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// What is wrong, with the key.
    pub message: String,
}

/// The whole configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; `None` when there was none (defaults).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[plugins]`.
    pub plugins: PluginsConfig,
    /// `[hotreload]`.
    pub hotreload: HotReloadConfig,
    /// `[platforms.<id>]`, by id.
    pub platforms: BTreeMap<String, PlatformConfig>,
    /// `[[routes]]`.
    pub routes: Vec<Route>,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[delivery]`.
    pub delivery: DeliveryConfig,
}

/// `[plugins]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsConfig {
    /// The config's folders holding `<plugin>/plugin.toml`.
    pub dirs: Vec<PathBuf>,
    /// Where plugins are looked for, in order: `$HERMES_PLUGIN_PATH`, `dirs`, the user's and
    /// the system's folders ([`paths::plugin_search`]).
    pub search: Vec<paths::SearchDir>,
    /// Where libraries are looked for after the plugin folder.
    pub library_dirs: Vec<PathBuf>,
    /// Other folders a library may resolve into through a symlink ([`crate::trust`]).
    pub trusted_dirs: Vec<PathBuf>,
    /// `trust`: `any` (strict modes only), `lock` (hermes.lock pins each library) or `signed`
    /// (a minisign signature by one of `trusted_keys` too).
    pub trust: crate::trust::lock::Trust,
    /// `trusted_keys`: minisign public keys (base64, as `minisign -G` prints them).
    pub trusted_keys: Vec<String>,
    /// Persisted state.
    pub state_dir: PathBuf,
    /// Where shadow copies are loaded from.
    pub shadow_dir: PathBuf,
    /// `probe`, default true: open every new library in a child process first.
    pub probe: bool,
}

impl PluginsConfig {
    /// The folders to discover plugins in, in order.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        self.search.iter().map(|d| d.path.clone()).collect()
    }

    /// Which search folder `manifest` was found under (the first that holds it).
    pub fn origin_of(&self, manifest: &Path) -> Option<&paths::SearchDir> {
        self.search.iter().find(|d| manifest.starts_with(&d.path))
    }
}

/// `[hotreload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HotReloadConfig {
    /// Whether hot reload may be enabled.
    pub allowed: bool,
    /// Debounce of library file events.
    pub debounce: Duration,
}

/// One end of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The platform id.
    pub platform: String,
    /// The chat on it.
    pub chat: String,
}

/// `[[routes]]`: forwards inbound messages of one chat to others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The source chat.
    pub from: Endpoint,
    /// The targets.
    pub to: Vec<Endpoint>,
}

/// `[journal]`.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalConfig {
    /// The JSONL file.
    pub path: PathBuf,
    /// How often batches are written.
    pub flush: Duration,
    /// `flush` (every `flush_ms`) or `fsync` (on disk before the answer).
    pub durability: crate::journal::Durability,
    /// The writer's queue bound, in bytes (`queue_kib`).
    pub queue_bytes: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    plugins: RawPlugins,
    #[serde(default)]
    hotreload: RawHotReload,
    #[serde(default)]
    platforms: BTreeMap<String, toml::Table>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    delivery: RawDelivery,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    dirs: Option<Vec<PathBuf>>,
    library_dirs: Option<Vec<PathBuf>>,
    trusted_dirs: Option<Vec<PathBuf>>,
    trust: Option<crate::trust::lock::Trust>,
    trusted_keys: Option<Vec<String>>,
    state_dir: Option<PathBuf>,
    shadow_dir: Option<PathBuf>,
    probe: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHotReload {
    allowed: Option<bool>,
    debounce_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    path: Option<PathBuf>,
    flush_ms: Option<u64>,
    durability: Option<crate::journal::Durability>,
    queue_kib: Option<u64>,
}

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a regular file of at most `max` bytes as UTF-8. Anything else (a FIFO, a device, a
/// folder) is an error at once: it is opened without blocking and refused on its type, so a
/// config replaced by a FIFO cannot hang a config reload.
pub(crate) fn read_regular(path: &Path, max: u64) -> std::io::Result<String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes; at most {max} are read", meta.len()),
        ));
    }
    let mut text = String::new();
    file.take(max).read_to_string(&mut text)?;
    Ok(text)
}

/// The default config file name, looked for in the working directory.
pub const DEFAULT_CONFIG: &str = "hermes.toml";

impl Config {
    /// Reads `path`; a missing file gives the defaults (relative to the working directory).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match read_regular(path, MAX_CONFIG_BYTES) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::resolve(RawConfig::default(), Path::new("."), None)
            }
            Err(e) => Err(ConfigError {
                path: path.to_owned(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: crate::toml_error::describe(text, &e),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::resolve(raw, base, Some(path))
    }

    fn resolve(raw: RawConfig, base: &Path, source: Option<&Path>) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: source
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("(defaults)")),
            message,
        };
        let at = |p: PathBuf| normalize(&if p.is_absolute() { p } else { base.join(p) });
        let idempotency_ttl = match raw.delivery.idempotency_ttl_secs {
            Some(0) => {
                return Err(err(
                    "key `delivery.idempotency_ttl_secs`: at least 1".to_owned()
                ));
            }
            secs => Duration::from_secs(secs.unwrap_or(86_400)),
        };
        let trust = raw.plugins.trust.unwrap_or_default();
        let trusted_keys = raw.plugins.trusted_keys.clone().unwrap_or_default();
        crate::trust::signed::keys(&trusted_keys).map_err(&err)?;
        if trust == crate::trust::lock::Trust::Signed && trusted_keys.is_empty() {
            return Err(err(
                "key `plugins.trusted_keys`: trust = \"signed\" needs at least one key (as `minisign -G` prints it)".to_owned(),
            ));
        }
        let state_dir = paths::service_state_dir(&paths::ProcessEnv)
            .unwrap_or_else(|| at(raw.plugins.state_dir.unwrap_or_else(|| ".hermes".into())));
        let shadow_dir = raw
            .plugins
            .shadow_dir
            .map(at)
            .unwrap_or_else(|| state_dir.join("shadow"));
        let dirs_named = raw.plugins.dirs.is_some();
        let dirs: Vec<PathBuf> = raw
            .plugins
            .dirs
            .clone()
            .unwrap_or_else(|| vec!["plugins".into()])
            .into_iter()
            .map(at)
            .collect();
        let mut platforms = BTreeMap::new();
        for (id, table) in raw.platforms {
            if !crate::manifest::valid_id(&id) {
                return Err(err(format!(
                    "[platforms.{id}]: {id:?} is not a valid platform id (^[a-z0-9][a-z0-9_-]{{0,63}}$)"
                )));
            }
            let platform = platform_config(table)
                .map_err(|(key, message)| err(format!("key `platforms.{id}.{key}`: {message}")))?;
            platforms.insert(id, platform);
        }
        for (i, route) in raw.routes.iter().enumerate() {
            if route.to.is_empty() {
                return Err(err(format!(
                    "key `routes[{i}].to`: a route needs at least one target"
                )));
            }
        }
        let flush_ms = raw.journal.flush_ms.unwrap_or(200);
        if flush_ms == 0 {
            return Err(err("key `journal.flush_ms`: must be at least 1".into()));
        }
        let queue_kib = raw
            .journal
            .queue_kib
            .unwrap_or((crate::journal::DEFAULT_QUEUE_BYTES / 1024) as u64);
        if !(256..=(1 << 22)).contains(&queue_kib) {
            return Err(err(format!(
                "key `journal.queue_kib`: {queue_kib} is out of range (256 to 4194304, that is 256 KiB to 4 GiB)"
            )));
        }
        Ok(Config {
            source: source.map(Path::to_owned),
            server: server_config(raw.server, at).map_err(err)?,
            plugins: PluginsConfig {
                // The default `plugins` folder is searched when it exists; a folder the config
                // names is reported when it does not.
                search: paths::plugin_search(
                    &paths::ProcessEnv,
                    &dirs
                        .iter()
                        .filter(|d| dirs_named || d.is_dir())
                        .cloned()
                        .collect::<Vec<_>>(),
                ),
                dirs,
                library_dirs: raw
                    .plugins
                    .library_dirs
                    .unwrap_or_else(|| vec!["target/debug".into()])
                    .into_iter()
                    .map(at)
                    .collect(),
                trusted_dirs: raw
                    .plugins
                    .trusted_dirs
                    .unwrap_or_default()
                    .into_iter()
                    .map(at)
                    .collect(),
                trust,
                trusted_keys,
                state_dir: state_dir.clone(),
                shadow_dir,
                probe: raw.plugins.probe.unwrap_or(true),
            },
            hotreload: HotReloadConfig {
                allowed: raw.hotreload.allowed.unwrap_or(false),
                debounce: Duration::from_millis(raw.hotreload.debounce_ms.unwrap_or(150)),
            },
            platforms,
            routes: raw.routes,
            delivery: DeliveryConfig { idempotency_ttl },
            journal: JournalConfig {
                path: raw
                    .journal
                    .path
                    .map(at)
                    .unwrap_or_else(|| state_dir.join("journal.jsonl")),
                flush: Duration::from_millis(flush_ms),
                durability: raw.journal.durability.unwrap_or_default(),
                queue_bytes: queue_kib as usize * 1024,
            },
        })
    }
}

/// Removes `.` and folds `dir/..` without touching the file system, so messages show
/// `plugins/x` rather than `examples/../plugins/x`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests;
