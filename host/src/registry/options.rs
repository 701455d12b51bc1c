//! What a registry is built with: where libraries are looked for and copied, the platforms'
//! tables, the sink of inbound messages, the probe and isolation programs, the state folder,
//! and what trust asks of a library.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    config::{Config, PlatformConfig},
    loader::EventSink,
    probe::Prober,
};

/// How the registry loads libraries.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Where libraries are looked for after the plugin folder.
    pub library_dirs: Vec<PathBuf>,
    /// Other folders a library may resolve into (through a symlink).
    pub trusted_dirs: Vec<PathBuf>,
    /// `trust = "lock"` or `"signed"`: each library must be pinned in this lock file.
    pub lock_file: Option<PathBuf>,
    /// `trust = "signed"`: each library must be signed by one of these keys.
    pub signing_keys: Option<Vec<minisign_verify::PublicKey>>,
    /// Where shadow copies go.
    pub shadow_dir: PathBuf,
    /// `[platforms.<id>]` tables.
    pub platforms: BTreeMap<String, PlatformConfig>,
    /// Where instances deliver inbound messages and logs.
    pub sink: Arc<dyn EventSink>,
    /// The `hermes-host` binary that probes libraries before they are opened (see
    /// [`crate::probe`]); `None` opens without a probe.
    pub probe: Option<PathBuf>,
    /// The `hermes-host` binary that runs platforms with `isolation = "process"`; `None`
    /// refuses them.
    pub child_program: Option<PathBuf>,
    /// Where load markers and the quarantine list live (see [`crate::quarantine`]); `None`
    /// keeps no quarantine.
    pub state_dir: Option<PathBuf>,
    /// The folder of hermes.toml: a plugin's `path_keys` resolve against it.
    pub config_dir: PathBuf,
}

impl RegistryOptions {
    /// The options a config describes.
    pub fn from_config(config: &Config, sink: Arc<dyn EventSink>) -> Self {
        RegistryOptions {
            library_dirs: config.plugins.library_dirs.clone(),
            trusted_dirs: config.plugins.trusted_dirs.clone(),
            lock_file: None,
            signing_keys: None,
            shadow_dir: config.plugins.shadow_dir.clone(),
            platforms: config.platforms.clone(),
            sink,
            probe: config.plugins.probe.then(Prober::find_program).flatten(),
            child_program: Prober::find_program(),
            state_dir: Some(config.plugins.state_dir.clone()),
            // Absolute, so that a plugin gets absolute `path_keys` even from `-c hermes.toml`
            // (a relative file whose folder is "").
            config_dir: {
                let dir = config
                    .source
                    .as_deref()
                    .and_then(Path::parent)
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
            },
        }
        .with_lock(config)
    }

    fn with_lock(mut self, config: &Config) -> Self {
        use crate::trust::lock::Trust;
        if config.plugins.trust != Trust::Any {
            self.lock_file = Some(crate::trust::lock::path_for(&self.config_dir));
        }
        if config.plugins.trust == Trust::Signed {
            // Checked when the config was read.
            self.signing_keys = crate::trust::signed::keys(&config.plugins.trusted_keys).ok();
        }
        self
    }
}
