//! The plugin commands that read the installed plugins themselves: `list`, `info`, `check`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Result;
use hermes_plugin_api::abi::ABI_VERSION;
use serde_json::json;

use super::{PluginCommand, remote, table::write_table};
use crate::{
    check,
    config::Config,
    loader::DiscardInbound,
    registry::{Registry, RegistryOptions},
};

/// Builds the registry for a CLI command, printing discovery problems as warnings.
pub(super) fn registry(config: &Config) -> Registry {
    let options = RegistryOptions::from_config(config, Arc::new(DiscardInbound));
    let registry = Registry::discover(&config.plugins.search_dirs(), options);
    for problem in registry.problems() {
        eprintln!("warning: {problem}");
    }
    registry
}

/// `plugin list`, `info` and `check`; the other plugin commands go to the running server.
pub(super) fn plugin(config: &Config, command: PluginCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        PluginCommand::List(flag) => {
            let list = registry(config).list();
            // Where each came from: the search folder that holds its manifest.
            let from = |s: &crate::registry::PlatformStatus| {
                config.plugins.origin_of(&s.manifest_path).map_or_else(
                    || "-".to_owned(),
                    |d| format!("{} ({})", d.path.display(), d.origin.name()),
                )
            };
            if flag.json {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        let mut row = serde_json::to_value(s).unwrap_or_default();
                        if let Some(d) = config.plugins.origin_of(&s.manifest_path) {
                            row["from"] = json!({ "dir": d.path, "origin": d.origin });
                        }
                        row
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                write_table(&mut out, &list, Some(("FROM", &from)))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Info { id, json } => {
            let registry = registry(config);
            let entry = registry.entry(&id)?;
            let manifest = entry.manifest();
            let library = registry.resolve_library(entry);
            let env = |names: &[String]| -> Vec<serde_json::Value> {
                names
                    .iter()
                    .map(|n| json!({ "name": n, "present": std::env::var_os(n).is_some_and(|v| !v.is_empty()) }))
                    .collect()
            };
            if json {
                let info = json!({
                    "manifest": manifest,
                    "manifest_path": entry.manifest_path(),
                    "library_path": library.as_ref().ok(),
                    "library_error": library.as_ref().err().map(ToString::to_string),
                    "required_env": env(&manifest.required_env),
                    "optional_env": env(&manifest.optional_env),
                    "status": entry.status(),
                    "live": remote::live_status(config, &id),
                    "host_api": ABI_VERSION,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                let status = entry.status();
                let emoji = manifest
                    .emoji
                    .as_deref()
                    .map(|e| format!(" {e}"))
                    .unwrap_or_default();
                writeln!(out, "{} - {}{emoji}", manifest.id, manifest.name)?;
                let mut row = |k: &str, v: String| writeln!(out, "  {k:<13} {v}");
                if !manifest.description.is_empty() {
                    row("description", manifest.description.clone())?;
                }
                row("version", manifest.version.clone())?;
                row(
                    "api",
                    format!(
                        "{} (this host speaks levels 1.0 to {}; a plugin's level shows once it is loaded)",
                        manifest.api,
                        hermes_plugin_api::abi::level_name(hermes_plugin_api::abi::LEVEL)
                    ),
                )?;
                row("kind", manifest.kind.clone())?;
                row("manifest", entry.manifest_path().display().to_string())?;
                row(
                    "library",
                    match &library {
                        Ok(p) => p.display().to_string(),
                        Err(e) => e.to_string(),
                    },
                )?;
                let live = remote::live_status(config, &id);
                match &live {
                    Some(live) => row(
                        "serving",
                        format!(
                            "{} in the running server: generation {}, version {}{}",
                            live.state.as_str(),
                            live.generation,
                            live.version,
                            live.api_level
                                .as_ref()
                                .map(|l| format!(", plugin API level {l}"))
                                .unwrap_or_default()
                        ),
                    )?,
                    None => row("serving", "no server running".to_owned())?,
                }
                let configured = if config.platforms.contains_key(&id) {
                    format!("yes ([platforms.{id}])")
                } else if entry.configured() {
                    "yes (enable_when holds)".to_owned()
                } else {
                    "no".to_owned()
                };
                row("configured", configured)?;
                if entry.configured() {
                    row("senders", status.senders.clone())?;
                    // What confines it: as the running server enforces it, else as configured.
                    let sandbox = live.map_or(status.sandbox.clone(), |l| l.sandbox);
                    row("sandbox", sandbox)?;
                }
                for (label, names) in [
                    ("required env", &manifest.required_env),
                    ("optional env", &manifest.optional_env),
                ] {
                    if names.is_empty() {
                        continue;
                    }
                    let shown: Vec<String> = names
                        .iter()
                        .map(|n| {
                            let set = std::env::var_os(n).is_some_and(|v| !v.is_empty());
                            format!("{n} ({})", if set { "set" } else { "missing" })
                        })
                        .collect();
                    row(label, shown.join(", "))?;
                }
                if let Some(hint) = &manifest.install_hint {
                    row("install", hint.clone())?;
                }
                if let Some(error) = &status.error {
                    row("error", error.clone())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::New { id, dir, api_path } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&id));
            // This build's own checkout, when it is still there.
            let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
            let api_path = api_path.or_else(|| checkout.is_dir().then_some(checkout));
            let made = super::scaffold::scaffold(&id, &dir, api_path.as_deref())?;
            writeln!(
                out,
                "created plugin {id} in {}: {}",
                made.dir.display(),
                made.files.join(", ")
            )?;
            match &api_path {
                Some(path) => writeln!(
                    out,
                    "it depends on hermes-plugin-api by path: {}",
                    path.display()
                )?,
                None => writeln!(
                    out,
                    "note: it depends on hermes-plugin-api {} from crates.io, which this build cannot vouch for (it was built outside its checkout); if cargo cannot find it, give `--api-path <checkout>/plugin-api` or point Cargo.toml's dependency at a copy",
                    hermes_plugin_api::VERSION
                )?,
            }
            writeln!(
                out,
                "next: cd {} && cargo test && cargo build && hermes-host -c hermes.toml plugin check {id} --start && hermes-host -c hermes.toml serve --dev",
                made.dir.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Dev { crate_dir } => {
            super::dev::run(config, &crate_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Unquarantine { id } => {
            let registry = registry(config);
            registry.entry(&id)?;
            let quarantine = crate::quarantine::Quarantine::new(&config.plugins.state_dir);
            match quarantine.lift(&id)? {
                Some(record) => {
                    writeln!(
                        out,
                        "lifted the quarantine of {id} ({}, content {}); a running server loads it at the next use, or now with `hermes-host plugin reload {id}`",
                        record.library.display(),
                        &record.hash[..12.min(record.hash.len())]
                    )?;
                }
                None => writeln!(out, "{id} is not quarantined")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Check {
            id,
            start,
            json,
            verbose,
        } => {
            let report = check::check(&registry(config), &id, start)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(out, "checking {id}")?;
                for step in &report.steps {
                    let mark = match step.ok {
                        Some(true) => "ok  ",
                        Some(false) => "FAIL",
                        None => "--  ",
                    };
                    writeln!(out, "  {mark} {:<9} {}", step.name, step.detail)?;
                }
                match (&report.layout_details, verbose) {
                    (Some(details), true) => writeln!(out, "\n{details}")?,
                    (Some(_), false) => writeln!(
                        out,
                        "  (`plugin check {id} --verbose` shows the full layout comparison)"
                    )?,
                    _ => {}
                }
                match report.reason() {
                    None => writeln!(out, "{id}: sound")?,
                    Some(reason) => {
                        out.flush()?;
                        eprintln!(
                            "error: {id} refused: {}",
                            reason.lines().next().unwrap_or(reason)
                        );
                    }
                }
            }
            Ok(if report.sound {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PluginCommand::Lock { ids } => super::lock::run(config, ids),
        PluginCommand::Reload { id } => remote::reload(config, &id),
        PluginCommand::HotreloadEnable { id } => remote::hotreload_switch(config, &id, true),
        PluginCommand::HotreloadDisable { id } => remote::hotreload_switch(config, &id, false),
        PluginCommand::HotreloadStatus { json } => remote::hotreload_status(config, json),
    }
}
