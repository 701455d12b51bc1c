//! What an entry says without changing: whether calls are held, waits for a reload's end or a
//! replacement, its reload counts, its status, the serving instance and the last unload.

use std::sync::Arc;

use super::{Entry, EntryState, Instance, LoadFailure, PlatformStatus, ReloadStats};
use crate::loader::UnloadReport;

impl Entry {
    /// Whether a reload holds new calls at the door.
    pub fn is_held(&self) -> bool {
        self.slot.borrow().state == EntryState::Draining
    }

    /// Waits, without blocking a thread, until no reload holds calls at the door.
    pub async fn wait_released(&self) {
        self.wait_until(|slot| slot.state != EntryState::Draining)
            .await;
    }

    /// Waits, without blocking a thread, until generation `generation` no longer serves: a
    /// newer one does, or the entry left `running` for good (failed, stopped, unloaded).
    pub async fn wait_replaced(&self, generation: u64) {
        self.wait_until(|slot| match slot.state {
            EntryState::Running => slot.generation != generation,
            EntryState::Draining | EntryState::Loading | EntryState::Starting => false,
            _ => true,
        })
        .await;
    }

    /// Reload counts and the last outcome.
    pub fn reload_stats(&self) -> ReloadStats {
        self.reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the reload counts.
    pub(crate) fn record_reload<R>(&self, change: impl FnOnce(&mut ReloadStats) -> R) -> R {
        change(&mut self.reloads.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The entry's status, without loading anything.
    pub fn status(&self) -> PlatformStatus {
        let slot = self.slot.borrow();
        let version = match &slot.instance {
            Some(instance) => instance.plugin_version().to_owned(),
            None => self.manifest.version.clone(),
        };
        // `hung` and `crashed` are how a running instance shows; the crash is its error.
        let serving = slot
            .instance
            .as_ref()
            .filter(|_| slot.state == EntryState::Running);
        let (state, error) = match serving.map(|i| (i.crashed(), i.is_hung())) {
            Some((Some(exit), _)) => (
                EntryState::Crashed,
                Some(format!("the plugin's process {exit}")),
            ),
            Some((None, true)) => (EntryState::Hung, slot.error.clone()),
            _ => (slot.state, slot.error.clone()),
        };
        PlatformStatus {
            id: self.manifest.id.clone(),
            name: self.manifest.name.clone(),
            version,
            manifest_version: self.manifest.version.clone(),
            api: self.manifest.api,
            api_level: slot
                .instance
                .as_ref()
                .map(|i| hermes_plugin_api::abi::level_name(i.level())),
            state,
            generation: slot.generation,
            configured: self.configured(),
            error,
            pid: slot.instance.as_ref().and_then(|i| i.pid()),
            description: self.manifest.description.clone(),
            emoji: self.manifest.emoji.clone(),
            manifest_path: self.manifest_path.clone(),
            loads: slot.loads,
            load_seconds: slot.load_seconds,
            last_load_ms: slot.last_load_ms,
            last_open_ms: slot.last_open_ms,
            in_flight: slot.instance.as_ref().map_or(0, |i| i.in_flight()),
            quarantined: matches!(slot.failure.as_deref(), Some(LoadFailure::Quarantined(_))),
            senders: self.senders().describe(self.manifest.inbound),
            sandbox: match &slot.instance {
                Some(instance) => instance.sandbox(),
                None => match self.platform_config() {
                    Some(t) if t.isolation == crate::config::Isolation::Process => {
                        format!(
                            "sandbox = \"{}\" (its child is not running)",
                            t.sandbox.name()
                        )
                    }
                    _ => crate::sandbox::IN_PROCESS.to_owned(),
                },
            },
        }
    }

    /// The serving instance, if running and not held by a reload; never loads.
    pub fn running(&self) -> Option<Arc<Instance>> {
        let slot = self.slot.borrow();
        match slot.state {
            EntryState::Running => slot.instance.clone(),
            _ => None,
        }
    }

    /// The last unload's report, if any.
    pub fn last_unload(&self) -> Option<UnloadReport> {
        self.slot.borrow().last_unload.clone()
    }
}
