//! What an entry shows: its lifecycle state (the state machine's states and transitions; the
//! machine itself runs in [`super::Entry`]) and its status.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An entry's lifecycle state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Known from its manifest; nothing loaded.
    #[default]
    Registered,
    /// Its manifest could not be read (the error says which field); it never loads.
    Invalid,
    /// Its library is being opened and checked.
    Loading,
    /// The plugin's `start` is running.
    Starting,
    /// Loaded and started: serving calls.
    Running,
    /// A reload is swapping instances: new calls wait at the door, the old instance drains
    /// and stops, the new one starts.
    Draining,
    /// Running, but every worker is stuck in a call past its timeout: no call can be taken.
    /// Sends answer 503 (retryable); the supervisor replaces it (`on_hang = "restart"`).
    /// Observed, never stored: the entry is `running` underneath.
    Hung,
    /// Running with `isolation = "process"`, but its child process died (a signal, an exit, out
    /// of memory, or killed for a hung call): calls fail with 503 (retryable) until the
    /// supervisor has started a new child. Observed, never stored: the entry is `running`
    /// underneath.
    Crashed,
    /// Being stopped.
    Stopping,
    /// Was running; stopped and unloaded.
    Unloaded,
    /// The last load or start failed, or a stop did not finish; the error is on the entry.
    Failed,
}

impl EntryState {
    /// The lowercase name used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Registered => "registered",
            EntryState::Invalid => "invalid",
            EntryState::Loading => "loading",
            EntryState::Starting => "starting",
            EntryState::Running => "running",
            EntryState::Draining => "draining",
            EntryState::Hung => "hung",
            EntryState::Crashed => "crashed",
            EntryState::Stopping => "stopping",
            EntryState::Unloaded => "unloaded",
            EntryState::Failed => "failed",
        }
    }

    /// Whether the state machine allows `self -> next`:
    ///
    /// ```text
    /// registered | unloaded | failed --first use--> loading --opened--> starting --started--> running
    /// loading | starting --the load or start failed--> failed
    /// running --reload--> draining --new one swapped in, or the old one restarted--> running
    /// draining --neither could start--> failed
    /// running --unload--> stopping --stopped and unloaded--> unloaded
    /// stopping --a call or `stop` did not return--> failed
    /// ```
    pub fn can_become(self, next: EntryState) -> bool {
        use EntryState::*;
        matches!(
            (self, next),
            (Registered | Unloaded | Failed, Loading)
                | (Loading, Starting | Failed)
                | (Starting | Draining, Running | Failed)
                | (Running, Draining | Stopping)
                | (Stopping, Unloaded | Failed)
        )
    }

    /// Whether no load, swap or stop is in progress.
    pub fn is_settled(self) -> bool {
        !matches!(
            self,
            EntryState::Loading
                | EntryState::Starting
                | EntryState::Draining
                | EntryState::Stopping
        )
    }
}

/// An entry's status: what `plugin list`, `/api/platforms` and `status` show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformStatus {
    /// The platform id.
    pub id: String,
    /// The display name.
    pub name: String,
    /// The loaded library's version while loaded, the manifest's otherwise.
    pub version: String,
    /// The manifest's version.
    pub manifest_version: String,
    /// The plugin ABI version the manifest declares.
    pub api: u32,
    /// The plugin API level of the loaded library (`1.0`, `1.1`); known once loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_level: Option<String>,
    /// The lifecycle state.
    pub state: EntryState,
    /// The generation serving (or last served); 0 when never loaded.
    pub generation: u64,
    /// Whether a `[platforms.<id>]` table or the manifest's `enable_when` enables it.
    pub configured: bool,
    /// The last load or start error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The manifest's description.
    pub description: String,
    /// The manifest's emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// Loads attempted so far.
    pub loads: u64,
    /// Time spent in loads and starts so far, in seconds.
    pub load_seconds: f64,
    /// How long the last load and start took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_load_ms: Option<f64>,
    /// Of `last_load_ms`, the library load (shadow copy, dlopen, checks); the rest is `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_open_ms: Option<f64>,
    /// Calls running or queued on the serving instance.
    pub in_flight: usize,
    /// The child process serving it (`isolation = "process"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its library is quarantined: the process died while loading or starting it before.
    #[serde(default)]
    pub quarantined: bool,
    /// Whose inbound messages it delivers (`allowed_users`, `allow_all_users`, the default).
    #[serde(default)]
    pub senders: String,
    /// What confines it: its child's sandbox as enforced, or that it runs unconfined.
    #[serde(default)]
    pub sandbox: String,
}

/// Reload counts and the last outcome of one platform.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadStats {
    /// Completed reloads.
    pub done: u64,
    /// Refused reloads.
    pub refused: u64,
    /// The last reload, either way.
    pub last: Option<LastReload>,
    /// The last refusal's reason.
    pub last_error: Option<String>,
}

/// The last reload of a platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// `done` or `refused`.
    pub outcome: std::borrow::Cow<'static, str>,
    /// How long it took.
    pub latency_ms: f64,
    /// Generation serving afterwards.
    pub generation: Option<u64>,
    /// How long new calls were held at the door (0 when refused before the swap).
    pub held_ms: f64,
    /// Of that, the old instance's stop.
    pub stop_ms: f64,
    /// Of that, the new instance's start.
    pub start_ms: f64,
    /// What triggered it: `cli`, `watcher`...
    pub trigger: String,
}
