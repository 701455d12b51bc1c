//! `[platforms.<id>]`: the host's keys for one platform (`start`, `call_timeout_ms`,
//! `idle_unload_secs`, `workers`, `max_queue`, `on_hang`), and the rest of the table, which
//! belongs to the plugin.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a configured platform starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Before the server reports ready.
    Eager,
    /// On a pool after the listeners are up.
    Background,
    /// At first use.
    OnDemand,
}

/// What the supervisor does with a hung instance (every worker stuck past the call timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHang {
    /// Replace it with a fresh generation (without its state), with backoff.
    Restart,
    /// Leave it hung (sends answer 503) until `plugin reload`.
    Fail,
}

/// `[platforms.<id>]`: the host's keys, and the rest for the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformConfig {
    /// `start`, default `eager`.
    pub start: StartMode,
    /// `call_timeout_ms`, default 30000.
    pub call_timeout: Duration,
    /// `idle_unload_secs`: unload after this long without traffic.
    pub idle_unload: Option<Duration>,
    /// `workers`, default 2: threads serving the instance's calls.
    pub workers: usize,
    /// `max_queue`, default 1024: calls that may wait for a worker; more get 503 at once.
    pub max_queue: usize,
    /// `on_hang`, default `restart`: what a hung instance gets.
    pub on_hang: OnHang,
    /// Every other key: the plugin's config.
    pub plugin: toml::Table,
}

/// `call_timeout_ms` when a platform's table does not say.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            start: StartMode::Eager,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            idle_unload: None,
            workers: 2,
            max_queue: 1024,
            on_hang: OnHang::Restart,
            plugin: toml::Table::new(),
        }
    }
}

impl PlatformConfig {
    /// The plugin's part as JSON text, as the ABI passes it.
    pub fn plugin_json(&self) -> String {
        serde_json::to_string(&self.plugin).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Splits the host's keys out of a `[platforms.<id>]` table; errors name the key.
pub(super) fn platform_config(
    mut table: toml::Table,
) -> Result<PlatformConfig, (&'static str, String)> {
    let mut config = PlatformConfig::default();
    if let Some(v) = table.remove("start") {
        config.start = v.try_into().map_err(|_| {
            (
                "start",
                "expected one of \"eager\", \"background\", \"on_demand\"".to_owned(),
            )
        })?;
    }
    let positive = |key: &'static str, v: toml::Value| match v.as_integer() {
        Some(n) if n > 0 => Ok(n as u64),
        _ => Err((key, "expected a positive integer".to_owned())),
    };
    if let Some(v) = table.remove("call_timeout_ms") {
        config.call_timeout = Duration::from_millis(positive("call_timeout_ms", v)?);
    }
    if let Some(v) = table.remove("idle_unload_secs") {
        config.idle_unload = Some(Duration::from_secs(positive("idle_unload_secs", v)?));
    }
    if let Some(v) = table.remove("workers") {
        let n = positive("workers", v)?;
        if n > 64 {
            return Err(("workers", "at most 64".to_owned()));
        }
        config.workers = n as usize;
    }
    if let Some(v) = table.remove("max_queue") {
        config.max_queue = positive("max_queue", v)?.min(1 << 20) as usize;
    }
    if let Some(v) = table.remove("on_hang") {
        config.on_hang = v
            .try_into()
            .map_err(|_| ("on_hang", "expected \"restart\" or \"fail\"".to_owned()))?;
    }
    config.plugin = table;
    Ok(config)
}
