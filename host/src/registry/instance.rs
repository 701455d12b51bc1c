//! A platform's library and instance, in this process or in a child (`isolation = "process"`):
//! one type each, so loads, reloads and unloads run the same transaction on either.

use std::time::Duration;

use crate::{
    isolate::{RemoteInstance, RemoteLibrary},
    loader::{self, CallError, StartOptions, StopError, UnloadReport},
    message::{Health, Outbound, PluginState, Receipt},
};

/// An opened library.
#[derive(Debug)]
pub enum Library {
    /// Mapped in this process.
    InProcess(loader::Library),
    /// Opened in a child process.
    Process(RemoteLibrary),
}

/// A started instance.
#[derive(Debug)]
pub enum Instance {
    /// In this process.
    InProcess(loader::Instance),
    /// In a child process.
    Process(RemoteInstance),
}

/// A stopped instance: its library, still open, and what it exported.
#[derive(Debug)]
pub struct Stopped {
    /// The library, ready to unload or start again.
    pub library: Library,
    /// Exported state.
    pub state: Option<PluginState>,
    /// An error from `export_state` or `stop` (stopped all the same).
    pub error: Option<CallError>,
}

/// A failed start: the error, and the library (still open).
#[derive(Debug)]
pub struct StartFailure {
    /// Why.
    pub error: CallError,
    /// The library.
    pub library: Library,
}

impl Library {
    /// The library's own version.
    pub fn plugin_version(&self) -> &str {
        match self {
            Library::InProcess(l) => l.plugin_version(),
            Library::Process(l) => l.plugin_version(),
        }
    }

    /// The plugin API level the library was built for (0 for 1.0, 1 for 1.1).
    pub fn level(&self) -> u32 {
        match self {
            Library::InProcess(l) => l.level(),
            Library::Process(l) => l.level(),
        }
    }

    /// The plugin's `validate_config`.
    pub fn validate_config(&self, config_json: &str, timeout: Duration) -> Result<(), CallError> {
        match self {
            Library::InProcess(l) => l.validate_config(config_json, timeout),
            Library::Process(l) => l.validate_config(config_json, timeout),
        }
    }

    /// Starts an instance; on failure the library comes back.
    pub fn start(self, options: StartOptions) -> Result<Instance, StartFailure> {
        match self {
            Library::InProcess(l) => {
                l.start(options)
                    .map(Instance::InProcess)
                    .map_err(|f| StartFailure {
                        error: f.error,
                        library: Library::InProcess(f.library),
                    })
            }
            Library::Process(l) => {
                l.start(options)
                    .map(Instance::Process)
                    .map_err(|(error, library)| StartFailure {
                        error,
                        library: Library::Process(library),
                    })
            }
        }
    }

    /// Unloads it (in process: `dlclose` checked against the maps; in a child: the child
    /// unloads it and exits).
    pub fn unload(self) -> UnloadReport {
        match self {
            Library::InProcess(l) => l.unload(),
            Library::Process(l) => l.unload(),
        }
    }
}

impl Instance {
    /// The platform id.
    pub fn platform(&self) -> &str {
        match self {
            Instance::InProcess(i) => i.platform(),
            Instance::Process(i) => i.platform(),
        }
    }

    /// This instance's generation.
    pub fn generation(&self) -> u64 {
        match self {
            Instance::InProcess(i) => i.generation(),
            Instance::Process(i) => i.generation(),
        }
    }

    /// The library's own version.
    pub fn plugin_version(&self) -> &str {
        match self {
            Instance::InProcess(i) => i.plugin_version(),
            Instance::Process(i) => i.plugin_version(),
        }
    }

    /// The plugin API level its library was built for (0 for 1.0, 1 for 1.1).
    pub fn level(&self) -> u32 {
        match self {
            Instance::InProcess(i) => i.level(),
            Instance::Process(i) => i.level(),
        }
    }

    /// The shadow copy mapped in this process, if in process.
    pub fn shadow_path(&self) -> Option<&std::path::Path> {
        match self {
            Instance::InProcess(i) => Some(i.shadow_path()),
            Instance::Process(_) => None,
        }
    }

    /// The child's pid, if isolated.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Instance::InProcess(_) => None,
            Instance::Process(i) => Some(i.pid()),
        }
    }

    /// What confines it, in one line: its child's sandbox, or that it has none.
    pub fn sandbox(&self) -> String {
        match self {
            Instance::InProcess(_) => crate::sandbox::IN_PROCESS.to_owned(),
            Instance::Process(i) => i.sandbox().map_or_else(
                || "unknown (its child has not reported its sandbox)".to_owned(),
                |e| e.summary(),
            ),
        }
    }

    /// Calls running or queued.
    pub fn in_flight(&self) -> usize {
        match self {
            Instance::InProcess(i) => i.in_flight(),
            Instance::Process(i) => i.in_flight(),
        }
    }

    /// From now on its deliveries are refused.
    pub fn retire(&self) {
        match self {
            Instance::InProcess(i) => i.retire(),
            Instance::Process(i) => i.retire(),
        }
    }

    /// Every worker stuck past the call timeout (in process; a child is killed instead).
    pub fn is_hung(&self) -> bool {
        match self {
            Instance::InProcess(i) => i.is_hung(),
            Instance::Process(_) => false,
        }
    }

    /// How its process died, if it is isolated and did.
    pub fn crashed(&self) -> Option<String> {
        match self {
            Instance::InProcess(_) => None,
            Instance::Process(i) => i.crashed(),
        }
    }

    /// What a replacement after a crash starts with: the state this instance started with.
    pub fn last_state(&self) -> Option<PluginState> {
        match self {
            Instance::InProcess(_) => None,
            Instance::Process(i) => i.last_state(),
        }
    }

    /// Sends a message, waiting on this thread.
    pub fn send(&self, message: &Outbound) -> Result<Receipt, CallError> {
        match self {
            Instance::InProcess(i) => i.send(message),
            Instance::Process(i) => i.send(message),
        }
    }

    /// Sends a message, awaiting the answer.
    pub async fn send_async(&self, message: &Outbound) -> Result<Receipt, CallError> {
        match self {
            Instance::InProcess(i) => i.send_async(message).await,
            Instance::Process(i) => i.send_async(message).await,
        }
    }

    /// The plugin's health, waiting on this thread.
    pub fn health(&self) -> Result<Health, CallError> {
        match self {
            Instance::InProcess(i) => i.health(),
            Instance::Process(i) => i.health(),
        }
    }

    /// The plugin's health; `within` bounds the wait.
    pub async fn health_async(&self, within: Duration) -> Result<Health, CallError> {
        match self {
            Instance::InProcess(i) => i.health_async(within).await,
            Instance::Process(i) => i.health_async(within).await,
        }
    }

    /// Benchmark support: `n` raw FFI `health` calls in one job; their total time.
    #[doc(hidden)]
    pub fn time_raw_health_calls(&self, n: u32) -> Result<Duration, CallError> {
        match self {
            Instance::InProcess(i) => i.time_raw_health_calls(n),
            Instance::Process(i) => i.time_raw_health_calls(n),
        }
    }

    /// Stops it in order (see the loader's invariants); the library comes back open.
    pub fn stop(&self, export_state: bool, timeout: Duration) -> Result<Stopped, StopError> {
        match self {
            Instance::InProcess(i) => i.stop(export_state, timeout).map(|s| Stopped {
                library: Library::InProcess(s.library),
                state: s.state,
                error: s.error,
            }),
            Instance::Process(i) => i.stop(export_state, timeout).map(|s| Stopped {
                library: Library::Process(s.library),
                state: s.state,
                error: s.error,
            }),
        }
    }
}

/// Stops and unloads an instance a hung call kept from stopping, once that call returns; an
/// isolated one is killed at once (its process goes, and the library with it).
pub(crate) fn reap(instance: std::sync::Arc<Instance>) {
    if let Instance::Process(remote) = &*instance {
        remote.kill_replaced("it was replaced while a call was still running");
        return;
    }
    let name = format!(
        "hermes-reap-{}-g{}",
        instance.platform(),
        instance.generation()
    );
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        loop {
            match instance.stop(false, Duration::from_secs(60)) {
                Ok(stopped) => {
                    let report = stopped.library.unload();
                    tracing::info!(
                        platform = instance.platform(),
                        generation = instance.generation(),
                        unmapped = ?report.unmapped,
                        "a hung instance finished its call and was unloaded"
                    );
                    return;
                }
                Err(crate::loader::StopError::Busy) => continue,
                Err(_) => return,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a reaper thread: {e}; the old library stays mapped");
    }
}
