//! `plugin check`: put a plugin through every load-time check, keeping nothing.
//!
//! The library is loaded from a scratch shadow copy (in this process's own folder under the
//! shadow dir, removed with it), its ABI checked, its `[platforms.<id>]` table validated when there is
//! one, and, only when asked, a throwaway instance started and stopped. Then it is unloaded
//! and `/proc/self/maps` says whether it is really gone.

use std::{sync::Arc, time::Instant};

use hermes_plugin_api::abi::ABI_VERSION;
use serde::Serialize;

use crate::{
    loader::{DiscardInbound, Library, StartOptions},
    registry::{LoadFailure, Registry, RegistryError},
};

/// One step of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Step {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed; `None` when skipped.
    pub ok: Option<bool>,
    /// What was found.
    pub detail: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CheckReport {
    /// The platform id.
    pub id: String,
    /// Whether every step that ran passed.
    pub sound: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// For a vtable layout mismatch: abi_stable's full comparison (`--verbose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout_details: Option<String>,
}

impl CheckReport {
    fn step(&mut self, name: &'static str, ok: Option<bool>, detail: impl Into<String>) {
        if ok == Some(false) {
            self.sound = false;
        }
        self.steps.push(Step {
            name,
            ok,
            detail: detail.into(),
        });
    }

    /// The first failed step's detail: the reason the plugin was refused.
    pub(crate) fn reason(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| s.ok == Some(false))
            .map(|s| s.detail.as_str())
    }
}

/// Checks plugin `id`; with `start`, also starts and stops a throwaway instance.
pub(crate) fn check(
    registry: &Registry,
    id: &str,
    start: bool,
) -> Result<CheckReport, RegistryError> {
    let entry = registry.entry(id)?;
    let manifest = entry.manifest();
    let mut report = CheckReport {
        id: id.to_owned(),
        sound: true,
        steps: Vec::new(),
        layout_details: None,
    };

    // A manifest that could not be read: its own error, not the placeholder's API.
    let status = entry.status();
    if status.state == crate::registry::EntryState::Invalid {
        report.step(
            "manifest",
            Some(false),
            status
                .error
                .unwrap_or_else(|| "the manifest could not be read".into()),
        );
        return Ok(report);
    }
    if manifest.api != ABI_VERSION {
        report.step(
            "manifest",
            Some(false),
            crate::registry::LoadFailure::ApiMismatch {
                manifest: entry.manifest_path().to_owned(),
                declared: manifest.api,
            }
            .to_string(),
        );
        return Ok(report);
    }
    report.step(
        "manifest",
        Some(true),
        format!("{} (api {})", entry.manifest_path().display(), manifest.api),
    );

    let path = match registry.resolve_library(entry) {
        Ok(path) => path,
        Err(e) => {
            report.step("library", Some(false), e.to_string());
            return Ok(report);
        }
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    report.step(
        "library",
        Some(true),
        format!("{} ({:.1} MiB)", path.display(), size as f64 / 1048576.0),
    );

    // The probe, the quarantine and the load, as the server does them.
    let started = Instant::now();
    let opened = match registry.open_library(entry, &path) {
        Ok(opened) => opened,
        Err(e) => {
            let step = match &e {
                LoadFailure::Probe(_) => "probe",
                LoadFailure::Quarantined(_) => "quarantine",
                _ => "load",
            };
            report.step(step, Some(false), e.to_string());
            if let LoadFailure::Library(crate::loader::LoadError::Layout { details, .. }) = e {
                report.layout_details = Some(details);
            }
            return Ok(report);
        }
    };
    match &opened.probed {
        Some(probed) if probed.cached => {
            report.step("probe", Some(true), "sound (verdict cached)".to_owned());
        }
        Some(probed) => report.step(
            "probe",
            Some(true),
            format!(
                "sound: loaded in a child process first ({:.1} ms)",
                probed.ms
            ),
        ),
        None => report.step(
            "probe",
            None,
            "no hermes-host binary to probe with; loaded in this process directly".to_owned(),
        ),
    }
    let _marker = opened.marker;
    let library = opened.library;
    report.step(
        "load",
        Some(true),
        format!(
            "plugin API level {} (this host: 1.0 to {}), vtable layouts compatible, plugin version {} ({:.2} ms: copy, probe, dlopen, checks)",
            hermes_plugin_api::abi::level_name(library.level()),
            hermes_plugin_api::abi::level_name(hermes_plugin_api::abi::LEVEL),
            library.plugin_version(),
            started.elapsed().as_secs_f64() * 1e3
        ),
    );
    if library.plugin_version() != manifest.version {
        report.step(
            "version",
            None,
            format!(
                "the manifest says {}, the library {}",
                manifest.version,
                library.plugin_version()
            ),
        );
    }

    let platform = entry.platform_config().map(|p| (*p).clone());
    let timeout = platform
        .as_ref()
        .map_or(crate::config::DEFAULT_CALL_TIMEOUT, |p| p.call_timeout);
    let config_ok = match &platform {
        Some(p) => match library.validate_config(&registry.plugin_json(entry, p), timeout) {
            Ok(()) => {
                report.step("config", Some(true), format!("[platforms.{id}] is valid"));
                true
            }
            Err(e) => {
                report.step("config", Some(false), format!("[platforms.{id}]: {e}"));
                false
            }
        },
        None => {
            report.step(
                "config",
                None,
                format!("no [platforms.{id}] table; not validated"),
            );
            true
        }
    };

    // The host refuses to start a plugin whose required variables are missing; so does this.
    let missing = manifest.missing_env();
    let env_ok = missing.is_empty();
    if !manifest.required_env.is_empty() {
        match (env_ok, start) {
            (true, _) => report.step(
                "env",
                Some(true),
                format!("{} set", manifest.required_env.join(", ")),
            ),
            (false, true) => report.step(
                "env",
                Some(false),
                LoadFailure::MissingEnv {
                    manifest: entry.manifest_path().to_owned(),
                    names: missing,
                }
                .to_string(),
            ),
            (false, false) => report.step(
                "env",
                None,
                format!("{} unset: a start would be refused", missing.join(", ")),
            ),
        }
    }

    let library = if start && config_ok && env_ok {
        let platform = platform.unwrap_or_default();
        let options = StartOptions {
            workers: 1,
            call_timeout: timeout,
            max_queue: 16,
            ..StartOptions::new(
                id,
                1,
                registry.plugin_json(entry, &platform),
                Arc::new(DiscardInbound),
            )
        };
        match library.start(options) {
            Ok(instance) => {
                match instance.health() {
                    Ok(h) => report.step(
                        "start",
                        Some(true),
                        format!("started; health {:?} {}", h.status, h.detail)
                            .trim_end()
                            .to_owned(),
                    ),
                    Err(e) => report.step(
                        "start",
                        Some(false),
                        format!("started, but health failed: {e}"),
                    ),
                }
                match instance.stop(false, timeout) {
                    Ok(stopped) => {
                        match &stopped.error {
                            None => report.step("stop", Some(true), "stopped"),
                            Some(e) => report.step("stop", Some(false), e.to_string()),
                        }
                        Some(stopped.library)
                    }
                    Err(e) => {
                        report.step("stop", Some(false), e.to_string());
                        None
                    }
                }
            }
            Err(failure) => {
                report.step("start", Some(false), failure.error.to_string());
                Some(failure.library)
            }
        }
    } else {
        if !start {
            report.step(
                "start",
                None,
                "not started (pass --start to start and stop an instance)",
            );
        }
        Some(library)
    };

    match library.map(Library::unload) {
        Some(unload) if unload.clean() => report.step(
            "unload",
            Some(true),
            match unload.unmapped {
                Some(true) => "unloaded; the copy is no longer mapped".to_owned(),
                _ => "unloaded (mappings cannot be read on this system)".to_owned(),
            },
        ),
        Some(unload) => report.step(
            "unload",
            Some(false),
            format!(
                "library still resident: {}",
                unload.detail.unwrap_or_default()
            ),
        ),
        None => report.step(
            "unload",
            Some(false),
            "a call did not return; the library stays mapped",
        ),
    }
    Ok(report)
}
