//! Shared test helpers.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use hermes_host::{
    config::{Config, PlatformConfig},
    loader::EventSink,
    message::Inbound,
    registry::{Registry, RegistryOptions},
};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The debug target dir holding the plugin libraries.
pub(crate) fn target_debug() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("debug")
}

/// A built plugin library, e.g. `lib("hermes_loopback")`.
pub(crate) fn lib(name: &str) -> PathBuf {
    let path = target_debug().join(format!("lib{name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first with `cargo build --workspace` (`make test` does)",
        path.display()
    );
    path
}

/// The `hermes-host` binary under test.
pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hermes-host"))
}

/// A test's own folder, removed when dropped.
pub(crate) struct TestDir {
    pub(crate) dir: tempfile::TempDir,
}

impl TestDir {
    pub(crate) fn new() -> Self {
        // Under target/, not /tmp: /tmp may be mounted noexec, and dlopen maps code.
        let base = target_debug().join("test-tmp");
        fs::create_dir_all(&base).unwrap();
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("t-")
                .tempdir_in(base)
                .unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn plugins(&self) -> PathBuf {
        self.path().join("plugins")
    }

    pub(crate) fn shadow(&self) -> PathBuf {
        self.path().join("state/shadow")
    }

    /// Installs a plugin folder with a manifest for `library` (a built library's name); the
    /// library itself is found through `library_dirs` unless `copy_library` puts it inside.
    pub(crate) fn install(&self, id: &str, library: &str, api: u32) -> PathBuf {
        let dir = self.plugins().join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("plugin.toml"),
            format!(
                "[plugin]\nid = \"{id}\"\nname = \"Test {id}\"\nversion = \"0.0.1\"\napi = {api}\nlibrary = \"{library}\"\n"
            ),
        )
        .unwrap();
        dir
    }

    /// Installs a plugin whose library file is `bytes`, inside its folder.
    pub(crate) fn install_bytes(&self, id: &str, bytes: &[u8]) -> PathBuf {
        let library = format!("custom_{}", id.replace('-', "_"));
        let dir = self.install(id, &library, 1);
        fs::write(dir.join(format!("lib{library}.so")), bytes).unwrap();
        dir
    }

    /// A config file in this dir with `extra` appended; plugins from `plugins/`, libraries
    /// from the build's debug dir.
    pub(crate) fn config(&self, extra: &str) -> PathBuf {
        let path = self.path().join("hermes.toml");
        fs::write(
            &path,
            format!(
                "[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = [{:?}]\nstate_dir = \"state\"\n\n{extra}",
                target_debug().display().to_string()
            ),
        )
        .unwrap();
        path
    }

    /// A registry over this dir's plugins, with `platforms` as `[platforms.<id>]` TOML.
    pub(crate) fn registry(&self, platforms: &str, sink: Arc<dyn EventSink>) -> Registry {
        let config = Config::load(&self.config(platforms)).unwrap();
        Registry::discover(
            &config.plugins.dirs,
            RegistryOptions::from_config(&config, sink),
        )
    }
}

/// A platform config with the given plugin keys (TOML).
pub(crate) fn platform(toml_keys: &str) -> PlatformConfig {
    let table: toml::Table = toml::from_str(toml_keys).unwrap();
    PlatformConfig {
        plugin: table,
        ..PlatformConfig::default()
    }
}

/// An event sink that records inbound messages and lets a test wait for them.
#[derive(Default)]
pub(crate) struct Recorder {
    messages: Mutex<Vec<Inbound>>,
    arrived: Condvar,
}

impl EventSink for Recorder {
    fn inbound(&self, message: Inbound) {
        self.messages.lock().unwrap().push(message);
        self.arrived.notify_all();
    }
}

impl Recorder {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    /// Waits until `n` messages arrived (panics after 10 s: the event never came).
    pub(crate) fn wait_for(&self, n: usize) -> Vec<Inbound> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut messages = self.messages.lock().unwrap();
        while messages.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} messages arrived",
                messages.len()
            );
            messages = self.arrived.wait_timeout(messages, left).unwrap().0;
        }
        messages.clone()
    }

    pub(crate) fn messages(&self) -> Vec<Inbound> {
        self.messages.lock().unwrap().clone()
    }
}

/// Mapped files of this process whose path contains `needle`.
pub(crate) fn mapped_containing(needle: &str) -> Vec<PathBuf> {
    hermes_host::loader::mapped_files()
        .expect("/proc/self/maps")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(needle))
        .collect()
}

/// Files in `dir` (0 when it does not exist).
pub(crate) fn file_count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

/// Open file descriptors of this process.
pub(crate) fn fd_count() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The names of this process's threads.
pub(crate) fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Replaces every occurrence of `from` with `to` (same length) in `bytes`; returns the count.
pub(crate) fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    count
}
