//! Config reload, as nginx does it: SIGHUP or `hermes-host reload-config` re-reads hermes.toml.
//!
//! The whole change is checked before anything changes: the file must parse; a change to a key
//! that only a restart can apply (the listen address, the control socket, the token, runtime
//! threads, connection limits, the plugin folders, the state and shadow folders, the hot-reload
//! debounce, the journal) refuses the reload, naming the keys; every added or changed `[platforms.<id>]`
//! is validated by its plugin's `validate_config` (the library is loaded from a scratch copy
//! for that, and unloaded). Anything wrong refuses it as a whole: nothing changes, and the
//! reason is logged and answered. Otherwise it is applied: the routes are swapped whole;
//! removed platforms stop and unload; changed running ones reload through the reload
//! transaction with their new table (a change of `allowed_users`/`allow_all_users` alone
//! applies without a reload); added ones start by their `start` mode (an added `background`
//! one through a warm-up of its own, which makes the warm-up state `pending` again).

use std::sync::Arc;

use serde::Serialize;

use crate::{
    config::{Config, ConfigError, PlatformConfig, StartMode},
    gateway::Gateway,
};

/// What a config reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConfigChange {
    /// Platforms that got a table.
    pub added: Vec<String>,
    /// Platforms whose table was removed (stopped and unloaded).
    pub removed: Vec<String>,
    /// Platforms whose table changed (reloaded when running).
    pub changed: Vec<String>,
    /// Whether the routes changed.
    pub routes_changed: bool,
    /// Steps that failed while applying (a changed platform whose reload was refused keeps its
    /// old generation serving).
    pub failures: Vec<String>,
}

/// Why a config reload was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconfigureError {
    /// There is no config file to read (the server runs on defaults).
    #[error("the server runs without a config file; nothing to reload")]
    NoFile,
    /// The file does not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys that only a restart can apply changed.
    #[error("{file}: changing {} needs a restart; nothing was changed", .keys.join(", "))]
    NeedsRestart {
        /// The config file.
        file: String,
        /// The keys.
        keys: Vec<&'static str>,
    },
    /// A platform's new table is refused by its plugin.
    #[error("{file}: [platforms.{platform}] is refused: {cause}; nothing was changed")]
    Invalid {
        /// The config file.
        file: String,
        /// The platform.
        platform: String,
        /// Why.
        #[source]
        cause: crate::registry::LoadFailure,
    },
    /// The validation task itself failed (it panicked).
    #[error(
        "{file}: [platforms.{platform}] could not be validated: {message}; nothing was changed"
    )]
    Validation {
        /// The config file.
        file: String,
        /// The platform.
        platform: String,
        /// The task's error.
        message: String,
    },
    /// A table the host itself refuses (idle unload of a platform with inbound connections).
    #[error("{file}: {reason}; nothing was changed")]
    Refused {
        /// The config file.
        file: String,
        /// Why.
        reason: String,
    },
}

/// The keys, among those only a restart can apply, whose values differ between `old` and `new`.
fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    [
        ("server.listen", o.listen != n.listen),
        (
            "server.control_socket",
            o.control_socket != n.control_socket,
        ),
        ("server.api_token", o.api_token != n.api_token),
        (
            "server.worker_threads",
            o.worker_threads != n.worker_threads,
        ),
        (
            "server.max_connections",
            o.max_connections != n.max_connections,
        ),
        (
            "server.header_read_timeout_ms",
            o.header_read_timeout != n.header_read_timeout,
        ),
        ("plugins", old.plugins != new.plugins),
        (
            "hotreload.debounce_ms",
            old.hotreload.debounce != new.hotreload.debounce,
        ),
        ("journal", old.journal != new.journal),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

impl Gateway {
    /// Re-reads the config file and applies the change as a whole, or refuses it as a whole.
    pub async fn reload_config(self: &Arc<Self>) -> Result<ConfigChange, ReconfigureError> {
        // One reload at a time (SIGHUPs and the control socket alike), each on the file as
        // it is when its turn comes.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_AT_A_TIME.lock().await;
        crate::service::reloading();
        let result = self.try_reload_config().await;
        crate::service::ready(self);
        match &result {
            Ok(change) => tracing::info!(?change, "config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reload refused; nothing changed"),
        }
        result
    }

    async fn try_reload_config(self: &Arc<Self>) -> Result<ConfigChange, ReconfigureError> {
        let file = self.config.source.clone().ok_or(ReconfigureError::NoFile)?;
        let name = file.display().to_string();
        let new = Config::load(&file)?;
        let keys = restart_keys(&self.config, &new);
        if !keys.is_empty() {
            return Err(ReconfigureError::NeedsRestart { file: name, keys });
        }

        // Which installed platforms' tables change.
        let mut change = ConfigChange::default();
        let mut tables: Vec<(String, Option<PlatformConfig>)> = Vec::new();
        let mut only_senders = Vec::new();
        for entry in self.registry.entries() {
            let id = entry.manifest().id.clone();
            let old = entry.platform_config();
            let now =
                crate::config::effective_table(&id, new.platforms.get(&id), entry.enabled_by_env())
                    .map_err(|e| ReconfigureError::Refused {
                        file: name.clone(),
                        reason: e.to_string(),
                    })?;
            match (old.as_deref(), now.as_ref()) {
                (None, None) => continue,
                (Some(a), Some(b)) if a == b => continue,
                (None, Some(_)) => change.added.push(id.clone()),
                (Some(_), None) => change.removed.push(id.clone()),
                (Some(a), Some(b)) => {
                    if a.same_but_senders(b) {
                        only_senders.push(id.clone());
                    }
                    change.changed.push(id.clone());
                }
            }
            tables.push((id, now));
        }
        for id in new.platforms.keys() {
            if let Some(reason) = self.registry.unknown_table(id) {
                return Err(ReconfigureError::Refused { file: name, reason });
            }
        }
        let routes = new.routes.clone();
        change.routes_changed = *self.routes.current() != routes;

        // Every new table, validated by its plugin before anything changes.
        for (id, table) in &tables {
            let Some(table) = table else { continue };
            if let Some(reason) = self.registry.idle_unload_refusal(id, table) {
                return Err(ReconfigureError::Refused { file: name, reason });
            }
            let registry = Arc::clone(&self.registry);
            let (id2, table2) = (id.clone(), table.clone());
            let checked =
                tokio::task::spawn_blocking(move || registry.validate_table(&id2, &table2)).await;
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(cause)) => {
                    return Err(ReconfigureError::Invalid {
                        file: name,
                        platform: id.clone(),
                        cause,
                    });
                }
                Err(e) => {
                    return Err(ReconfigureError::Validation {
                        file: name,
                        platform: id.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }

        // Apply.
        self.routes.replace(routes);
        let hotreload = Arc::clone(self);
        let allowed = new.hotreload.allowed;
        let _ = tokio::task::spawn_blocking(move || hotreload.hotreload.set_allowed(allowed)).await;
        let mut background = Vec::new();
        for (id, table) in tables {
            let Ok(entry) = self.registry.entry(&id) else {
                continue;
            };
            let start = table.as_ref().map(|t| t.start);
            entry.set_platform_config(table);
            let registry = Arc::clone(&self.registry);
            let platform = id.clone();
            let applied = if change.removed.contains(&id) {
                tokio::task::spawn_blocking(move || {
                    registry
                        .unload(&platform)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            } else if change.changed.contains(&id) {
                // A change of the allowlist alone applies as it is stored: no reload.
                if entry.running().is_some() && !only_senders.contains(&id) {
                    tokio::task::spawn_blocking(move || {
                        registry
                            .reload(&platform, "config")
                            .map(|_| ())
                            .map_err(|e| e.reason)
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                } else {
                    Ok(())
                }
            } else if start == Some(StartMode::Background) {
                // Started by a warm-up of its own, as at start-up: the reload does not wait.
                background.push(id.clone());
                Ok(())
            } else if start == Some(StartMode::Eager) {
                self.instance(&id)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            if let Err(e) = applied {
                change.failures.push(format!("{id}: {e}"));
            }
        }
        crate::gateway::warn_about_senders(&self.registry);
        if !background.is_empty() {
            // Warm-up is pending again until they started (or failed): `warmup_wait` waits
            // for them and `/api/idle` is busy meanwhile.
            let _ = self.warmup.send_replace(crate::gateway::Warmup::Pending);
            tokio::spawn(crate::serve::warm_up(Arc::clone(self), background));
        }
        Ok(change)
    }
}
