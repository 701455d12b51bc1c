//! Reload as a transaction: a new library beside the old one, or nothing changes.
//!
//! 1. Re-read the manifest (refused if broken or built for another API), load the new library
//!    from a fresh shadow copy beside the old instance, check its ABI, validate the config. Any
//!    failure: the old generation goes on serving and the error is recorded. Nothing else
//!    changes.
//! 2. Hold new calls at the door (callers wait for the swap; async callers without a thread),
//!    then drain the old instance: calls already queued on it run to the end.
//! 3. Stop the old instance, exporting its state, and start the new one importing it. If the new
//!    start fails, the old library is started again with the same state and generation.
//! 4. Release the held calls to the serving generation, then unload the old library and check
//!    whether its copy is really unmapped.
//!
//! A caller that took the old instance just before the door closed and was refused by its
//! closed queue (the call never reached the plugin) is retried by the gateway on the serving
//! generation: no accepted call is lost or failed because of a reload.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hermes_plugin_api::abi::ABI_VERSION;
use serde::{Deserialize, Serialize};

use crate::{
    loader::UnloadReport,
    manifest::Manifest,
    registry::{Entry, Exclusive, Library, LoadFailure, Registry, RegistryError, Settled},
};

/// A completed reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The platform.
    pub platform: String,
    /// The generation that served before (`None` when the platform was not running).
    pub old_generation: Option<u64>,
    /// The generation serving now.
    pub new_generation: u64,
    /// The old library's version.
    pub old_version: Option<String>,
    /// The new library's version.
    pub new_version: String,
    /// The whole transaction.
    pub elapsed_ms: f64,
    /// How long new calls were held at the door.
    pub held_ms: f64,
    /// Of that, the old instance's drain and `stop` (with `export_state`).
    pub stop_ms: f64,
    /// Of that, the new instance's `start`.
    pub start_ms: f64,
    /// Bytes of state handed from the old generation to the new.
    pub state_bytes: Option<usize>,
    /// The old generation was hung or had crashed: the state it had was lost.
    pub state_lost: bool,
    /// How the old generation's process had ended, when it had crashed (isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_crashed: Option<String>,
    /// The old library's unload, checked against the process's mappings.
    pub old_unload: Option<UnloadReport>,
}

/// A refused reload: the old generation (if any) still serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("reload of `{platform}` refused: {reason}")]
pub struct ReloadRefused {
    /// The platform.
    pub platform: String,
    /// What kind of refusal: what a caller matches on.
    pub kind: RefusalKind,
    /// Why, in words (the cause's own message).
    pub reason: String,
    /// The generation still serving.
    pub serving_generation: Option<u64>,
}

/// What refused a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// No plugin with that id is installed.
    NotInstalled,
    /// The manifest is gone, broken, of another API, or its `required_env` is unset.
    Manifest,
    /// The new library could not be opened, failed a check, or refused the platform's table.
    Load,
    /// The new library failed to start (the old one serves again when it could restart).
    Start,
    /// The host refuses the platform's table (idle unload of a plugin with inbound connections).
    Config,
}

pub use super::status::{LastReload, ReloadStats};

impl Registry {
    /// Reloads `id` as a transaction (see the module docs). `trigger` is recorded in the stats.
    pub fn reload(&self, id: &str, trigger: &str) -> Result<ReloadOutcome, ReloadRefused> {
        let entry = self
            .entry(id)
            .map_err(|e| refused(id, RefusalKind::NotInstalled, e, None))?;
        let owner = entry.exclusive_blocking();
        let started = Instant::now();
        let result = self.reload_owned(entry, &owner, started);
        drop(owner);
        entry.record_reload(|stats| record(stats, id, trigger, started, &result));
        result
    }

    fn reload_owned(
        &self,
        entry: &Entry,
        owner: &Exclusive<'_>,
        started: Instant,
    ) -> Result<ReloadOutcome, ReloadRefused> {
        let id = entry.manifest().id.as_str();
        let Settled {
            instance: old,
            generation: old_generation,
        } = entry.settled_blocking(owner);
        let serving = old.as_ref().map(|i| i.generation());

        // 1. Everything that can fail without touching the serving instance.
        check_manifest(entry).map_err(|e| refused(id, RefusalKind::Manifest, e, serving))?;
        let Some(old) = old else {
            // Not running: a reload is a first load.
            let instance = self.instance(id).map_err(|e| match e {
                RegistryError::LoadFailed { cause, .. } => {
                    refused(id, RefusalKind::Load, cause, None)
                }
                other => refused(id, RefusalKind::Load, other, None),
            })?;
            return Ok(ReloadOutcome {
                platform: id.to_owned(),
                old_generation: None,
                new_generation: instance.generation(),
                old_version: None,
                new_version: instance.plugin_version().to_owned(),
                elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                held_ms: 0.0,
                stop_ms: 0.0,
                start_ms: 0.0,
                state_bytes: None,
                state_lost: false,
                old_crashed: None,
                old_unload: None,
            });
        };
        let super::open::Opened {
            library: new_library,
            marker: _marker,
            ..
        } = self
            .open_validated(entry)
            .map_err(|e| refused(id, RefusalKind::Load, e, serving))?;
        let timeout = self.call_timeout(entry);

        // 2. Hold the door, drain the old instance.
        entry.hold(owner);
        let held_at = Instant::now();
        // A hung instance cannot drain: waiting for it would only hold the door. Its state is
        // lost (it cannot export it while its calls are stuck); the new generation starts
        // without one.
        let hung = old.is_hung();
        // An isolated instance whose process died has nothing to drain or export: the new
        // generation starts with the state the dead one started with.
        let crashed = old.crashed();
        let drain_for = if hung {
            Duration::ZERO
        } else {
            timeout.max(Duration::from_secs(1))
        };
        let stopped = old.stop(true, drain_for);
        let stop_ms = held_at.elapsed().as_secs_f64() * 1e3;
        let (old_library, state, stop_note) = match stopped {
            Ok(s) => (Some(s.library), s.state, s.error.map(|e| e.to_string())),
            Err(crate::loader::StopError::Crashed { .. }) => (None, old.last_state(), None),
            // A call never returned: that instance cannot be stopped now. The new generation
            // takes over; a reaper stops and unloads the old one once the call returns (until
            // then its library is reported as stale).
            Err(e) => {
                old.retire();
                super::instance::reap(Arc::clone(&old));
                (None, None, Some(e.to_string()))
            }
        };
        if let Some(note) = &stop_note {
            tracing::warn!(
                platform = id,
                generation = old.generation(),
                "old instance: {note}"
            );
        }
        let state_bytes = state.as_ref().map(|s| s.bytes.len());
        let old_version = old.plugin_version().to_owned();
        drop(old);

        // 3. Start the new generation with the old one's state.
        let new_generation = old_generation + 1;
        let starting = Instant::now();
        let new_start = new_library.start(self.start_options(entry, new_generation, state.clone()));
        let start_ms = starting.elapsed().as_secs_f64() * 1e3;
        match new_start {
            Ok(instance) => {
                let instance = Arc::new(instance);
                let new_version = instance.plugin_version().to_owned();
                // A running entry's error is a note: the state a hung generation took along.
                let note = match &crashed {
                    Some(exit) => Some(format!(
                        "generation {old_generation}'s process {exit}; generation {new_generation} took over with the state generation {old_generation} started with"
                    )),
                    None => hung.then(|| {
                        format!(
                            "generation {old_generation} hung (its calls did not return within {} ms) and was replaced by generation {new_generation}, which started without its state",
                            timeout.as_millis()
                        )
                    }),
                };
                entry.serve(owner, instance, new_generation, note);
                let held_ms = held_at.elapsed().as_secs_f64() * 1e3;
                // 4. The held calls run on the new generation; now the old library goes.
                let old_unload = old_library.map(Library::unload);
                if let Some(report) = &old_unload {
                    entry.set_last_unload(report.clone());
                }
                Ok(ReloadOutcome {
                    platform: id.to_owned(),
                    old_generation: Some(old_generation),
                    new_generation,
                    old_version: Some(old_version),
                    new_version,
                    elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                    held_ms,
                    stop_ms,
                    start_ms,
                    state_bytes,
                    state_lost: hung || crashed.is_some(),
                    old_crashed: crashed.clone(),
                    old_unload,
                })
            }
            Err(failure) => {
                let reason = format!("the new library failed to start: {}", failure.error);
                let _ = failure.library.unload();
                // Start the old library again, as the same generation, with the same state.
                let restarted =
                    match old_library {
                        Some(library) => library
                            .start(self.start_options(entry, old_generation, state))
                            .map_err(|f| {
                                let _ = f.library.unload();
                                f.error.to_string()
                            }),
                        None => Err(stop_note
                            .unwrap_or_else(|| "the old instance could not be stopped".into())),
                    };
                let serving = match restarted {
                    Ok(instance) => {
                        entry.serve(owner, Arc::new(instance), old_generation, None);
                        Some(old_generation)
                    }
                    Err(e) => {
                        entry.swap_failed(
                            owner,
                            format!("{reason}; restarting the old library failed too: {e}"),
                        );
                        None
                    }
                };
                Err(refused(id, RefusalKind::Start, reason, serving))
            }
        }
    }
}

impl Registry {
    /// Opens `entry`'s library from a fresh shadow copy and has it check the platform's table.
    fn open_validated(&self, entry: &Entry) -> Result<super::open::Opened<Library>, LoadFailure> {
        let path = self.resolve_library(entry)?;
        self.count_load();
        let table = entry.platform_config().unwrap_or_default();
        let opened = self.open_platform(entry, &table, &path)?;
        let library = &opened.library;
        let config = entry
            .platform_config()
            .map(|p| self.plugin_json(entry, &p))
            .unwrap_or_else(|| "{}".into());
        if let Err(source) = library.validate_config(&config, self.call_timeout(entry)) {
            let _ = opened.library.unload();
            return Err(LoadFailure::Config {
                platform: entry.manifest().id.clone(),
                source,
            });
        }
        Ok(opened)
    }
}

/// Reads the manifest again: a reload refuses one that is gone, broken or for another API.
fn check_manifest(entry: &Entry) -> Result<(), LoadFailure> {
    let path = entry.manifest_path();
    match Manifest::load_if_present(path) {
        Some(Ok(m)) if m.api != ABI_VERSION => Err(LoadFailure::ApiMismatch {
            manifest: path.to_owned(),
            declared: m.api,
        }),
        Some(Ok(m)) => super::require_env(&m, path),
        Some(Err(e)) => Err(e.into()),
        None => Err(LoadFailure::ManifestGone(path.to_owned())),
    }
}

/// Counts a reload's outcome and logs it.
fn record(
    stats: &mut ReloadStats,
    id: &str,
    trigger: &str,
    started: Instant,
    result: &Result<ReloadOutcome, ReloadRefused>,
) {
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let at_ms = hermes_plugin_api::now_ms();
    match &result {
        Ok(outcome) => {
            stats.done += 1;
            // An older refusal is no longer the last word.
            stats.last_error = None;
            stats.last = Some(LastReload {
                at_ms,
                outcome: "done".into(),
                latency_ms,
                generation: Some(outcome.new_generation),
                held_ms: outcome.held_ms,
                stop_ms: outcome.stop_ms,
                start_ms: outcome.start_ms,
                trigger: trigger.to_owned(),
            });
            tracing::info!(
                platform = id,
                old = ?outcome.old_generation,
                new = outcome.new_generation,
                version = %outcome.new_version,
                ms = latency_ms,
                held_ms = outcome.held_ms,
                "reloaded"
            );
        }
        Err(refused) => {
            stats.refused += 1;
            stats.last_error = Some(refused.reason.clone());
            stats.last = Some(LastReload {
                at_ms,
                outcome: "refused".into(),
                latency_ms,
                generation: refused.serving_generation,
                held_ms: 0.0,
                stop_ms: 0.0,
                start_ms: 0.0,
                trigger: trigger.to_owned(),
            });
            tracing::warn!(platform = id, reason = %refused.reason, "reload refused; the old generation serves");
        }
    }
}

fn refused(
    platform: &str,
    kind: RefusalKind,
    reason: impl ToString,
    serving_generation: Option<u64>,
) -> ReloadRefused {
    ReloadRefused {
        platform: platform.to_owned(),
        kind,
        reason: reason.to_string(),
        serving_generation,
    }
}
