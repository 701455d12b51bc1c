//! Discovery: every installed plugin registered from its manifest alone, in parallel when
//! there are many; broken manifests listed as `invalid`; the quarantine swept.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64},
};

use hermes_plugin_api::abi::ABI_VERSION;

use super::{DiscoveryProblem, Entry, LoadFailure, Registry, RegistryOptions, api_mismatch};
use crate::{
    manifest::{MANIFEST_FILE, Manifest, ManifestError},
    probe::{PROBE_TIMEOUT, Prober},
    quarantine::Quarantine,
};

impl Registry {
    /// Reads every `<dir>/<plugin>/plugin.toml` under `dirs` (in name order) and registers the
    /// plugins. Opens no library.
    pub fn discover(dirs: &[PathBuf], options: RegistryOptions) -> Registry {
        let mut manifests = Vec::new();
        let mut problems = Vec::new();
        for dir in dirs {
            // A folder in `dirs` may itself be a plugin folder (a plugin crate's dev config).
            manifests.push(dir.join(MANIFEST_FILE));
            match std::fs::read_dir(dir) {
                Ok(read) => {
                    let mut paths: Vec<PathBuf> = read
                        .filter_map(|e| e.ok())
                        .map(|e| e.path().join(MANIFEST_FILE))
                        .collect();
                    paths.sort();
                    manifests.extend(paths);
                }
                Err(e) => problems.push(DiscoveryProblem::Folder {
                    path: dir.clone(),
                    message: e.to_string(),
                }),
            }
        }
        let loaded = load_manifests(&manifests);
        let mut entries: BTreeMap<String, Arc<Entry>> = BTreeMap::new();
        let mut invalid = Vec::new();
        for (path, loaded) in manifests.into_iter().zip(loaded) {
            let manifest = match loaded {
                None => continue,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    problems.push(e.clone().into());
                    invalid.push((path, e));
                    continue;
                }
            };
            if let Some(first) = entries.get(&manifest.id) {
                problems.push(DiscoveryProblem::DuplicateId {
                    id: manifest.id.clone(),
                    first: first.manifest_path().to_owned(),
                    second: path,
                });
                continue;
            }
            let enabled_by_env = manifest
                .enable_when
                .as_ref()
                .is_some_and(|rule| rule.holds());
            let mut failure = (manifest.api != ABI_VERSION).then(|| api_mismatch(&manifest, &path));
            let id = manifest.id.clone();
            // A platform enabled from the environment takes its table from there too, unless
            // hermes.toml has one; a bad variable fails the platform, naming the variable.
            let platform =
                crate::config::effective_table(&id, options.platforms.get(&id), enabled_by_env)
                    .unwrap_or_else(|e| {
                        problems.push(DiscoveryProblem::EnvConfig {
                            id: id.clone(),
                            error: e.clone(),
                        });
                        failure.get_or_insert(LoadFailure::EnvConfig {
                            platform: id.clone(),
                            source: e,
                        });
                        None
                    });
            let entry = Entry::new(manifest, path, enabled_by_env, platform, failure);
            entries.insert(id, Arc::new(entry));
        }
        // A plugin whose manifest is broken stays listed, as `invalid` under its folder's name
        // (unless a sound manifest took that id), rather than vanishing from `plugin list`.
        for (path, error) in invalid {
            let Some(id) = path
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .filter(|n| crate::manifest::valid_id(n) && !entries.contains_key(*n))
                .map(str::to_owned)
            else {
                continue;
            };
            let entry = Entry::invalid(placeholder_manifest(&id), path, error);
            entries.insert(id, Arc::new(entry));
        }
        let quarantine = options.state_dir.as_deref().map(Quarantine::new);
        if let Some(quarantine) = &quarantine {
            match quarantine.sweep() {
                Ok(found) => {
                    for record in found {
                        if record.suspect {
                            tracing::warn!(platform = %record.platform, library = %record.library.display(), "the process died while this library and others were loading; it loads alone next, and is quarantined if the process dies then");
                        } else {
                            tracing::error!(platform = %record.platform, library = %record.library.display(), "the process died while loading or starting this library; {record}");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the load markers"),
            }
        }
        Registry {
            prober: options
                .probe
                .clone()
                .map(|program| Prober::new(program, PROBE_TIMEOUT)),
            quarantine,
            entries,
            problems,
            options,
            loads: AtomicU64::new(0),
            shadow: std::sync::OnceLock::new(),
            lock_lenient: std::sync::Mutex::default(),
        }
    }
}

/// Reads and parses manifests (`None` where a folder has none), in order, on every core when
/// there are enough of them to pay for the threads: a manifest costs a few microseconds of
/// system calls and parsing, and start-up time should not grow with the number installed.
fn load_manifests(paths: &[PathBuf]) -> Vec<Option<Result<Manifest, ManifestError>>> {
    const PER_THREAD: usize = 64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || paths.len() < 2 * PER_THREAD {
        return paths.iter().map(|p| Manifest::load_if_present(p)).collect();
    }
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|p| Manifest::load_if_present(p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// What an invalid plugin shows: its folder's name, and nothing it did not say.
fn placeholder_manifest(id: &str) -> Manifest {
    Manifest {
        id: id.to_owned(),
        name: id.to_owned(),
        kind: "platform".to_owned(),
        version: "-".to_owned(),
        api: 0,
        library: String::new(),
        description: "(invalid manifest)".to_owned(),
        emoji: None,
        required_env: Vec::new(),
        optional_env: Vec::new(),
        install_hint: None,
        enable_when: None,
        capabilities: Default::default(),
        limits: Default::default(),
        sandbox: Default::default(),
        path_keys: Vec::new(),
        inbound: false,
    }
}
