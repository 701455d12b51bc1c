//! `hermes-host plugin lock [<id>...]`: pins the libraries of the plugins named (or of every
//! installed one whose library is found) in hermes.lock, beside the config, for
//! `[plugins] trust = "lock"` ([`crate::trust::lock`]).

use std::{io::Write as _, process::ExitCode, sync::Arc};

use anyhow::{Result, anyhow};

use crate::{
    config::Config,
    loader::DiscardInbound,
    registry::RegistryOptions,
    trust::lock::{LockFile, Pin, path_for, sha256_file},
};

pub(super) fn run(config: &Config, ids: Vec<String>) -> Result<ExitCode> {
    let registry = super::local::registry(config);
    let options = RegistryOptions::from_config(config, Arc::new(DiscardInbound));
    let path = path_for(&options.config_dir);
    let mut lock = LockFile::read(&path).map_err(|e| anyhow!(e))?;
    let named = !ids.is_empty();
    let ids: Vec<String> = if named {
        ids
    } else {
        registry
            .entries()
            .filter(|e| registry.resolve_library(e).is_ok())
            .map(|e| e.manifest().id.clone())
            .collect()
    };
    let mut out = std::io::stdout().lock();
    for id in &ids {
        let entry = registry.entry(id)?;
        let library = registry.resolve_library(entry)?;
        let (sha256, size) =
            sha256_file(&library).map_err(|e| anyhow!("{}: {e}", library.display()))?;
        let pin = Pin {
            library: entry.manifest().library_file_name(),
            sha256,
            size,
            version: entry.manifest().version.clone(),
        };
        let was = lock.plugins.insert(id.clone(), pin.clone());
        let change = match was {
            Some(old) if old.sha256 == pin.sha256 => "unchanged".to_owned(),
            Some(old) => format!("was {}", &old.sha256[..16.min(old.sha256.len())]),
            None => "new".to_owned(),
        };
        writeln!(
            out,
            "{id}: {} sha256 {} ({change})",
            library.display(),
            &pin.sha256
        )?;
    }
    lock.write(&path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    writeln!(
        out,
        "wrote {} ({} plugins pinned)",
        path.display(),
        lock.plugins.len()
    )?;
    Ok(ExitCode::SUCCESS)
}
