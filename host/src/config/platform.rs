//! `[platforms.<id>]`: the host's keys for one platform (`start`, `call_timeout_ms`,
//! `idle_unload_secs`, `workers`, `max_queue`, `on_hang`, `isolation`, `memory_limit_mb`,
//! `sandbox`, the `grants` table, `allowed_users`, `allow_all_users`, `fallback`, the `delivery`
//! table), and the rest of the table, which belongs to the plugin.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::senders::Senders;

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

/// Where a platform's library runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Mapped in the gateway: calls in nanoseconds; a crash of the plugin takes the gateway.
    InProcess,
    /// In a supervised child process: calls in microseconds; a crash ends the child, which is
    /// restarted.
    Process,
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
    /// `isolation`, default `in-process`.
    pub isolation: Isolation,
    /// `memory_limit_mb` (process isolation only): the child's address-space limit.
    pub memory_limit_mb: Option<u64>,
    /// `sandbox` (process isolation only), default `best-effort` ([`crate::sandbox`]).
    pub sandbox: crate::sandbox::Mode,
    /// `[platforms.<id>.grants]` (process isolation only): what the child may touch besides
    /// the manifest's `[sandbox]`; relative paths are resolved against the config's folder.
    pub grants: crate::sandbox::grants::Grants,
    /// `allowed_users` / `allow_all_users` (or the environment's): whose messages are delivered.
    pub senders: Senders,
    /// `fallback`, default `refuse`: what becomes of a message the platform cannot carry.
    pub fallback: crate::capabilities::Fallback,
    /// `[platforms.<id>.delivery]`: the rate budget and retries, over the manifest's
    /// `[limits]` ([`crate::delivery::policy`]).
    pub delivery: crate::delivery::policy::Limits,
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
            isolation: Isolation::InProcess,
            memory_limit_mb: None,
            sandbox: crate::sandbox::Mode::default(),
            grants: crate::sandbox::grants::Grants::default(),
            senders: Senders::Unset,
            fallback: crate::capabilities::Fallback::Refuse,
            delivery: crate::delivery::policy::Limits::default(),
            plugin: toml::Table::new(),
        }
    }
}

impl PlatformConfig {
    /// Whether `other` differs from this table in its allowlist only (which applies without a
    /// reload).
    pub fn same_but_senders(&self, other: &PlatformConfig) -> bool {
        let mut a = self.clone();
        a.senders = other.senders.clone();
        a == *other
    }

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
    if let Some(v) = table.remove("isolation") {
        config.isolation = v.try_into().map_err(|_| {
            (
                "isolation",
                "expected \"in-process\" or \"process\"".to_owned(),
            )
        })?;
    }
    if let Some(v) = table.remove("memory_limit_mb") {
        let mb = positive("memory_limit_mb", v)?;
        if config.isolation != Isolation::Process {
            return Err((
                "memory_limit_mb",
                "applies to isolation = \"process\" only (a limit on the gateway's own process would bind every platform)".to_owned(),
            ));
        }
        if mb < 32 {
            return Err((
                "memory_limit_mb",
                "at least 32 (the child's runtime needs that much address space)".to_owned(),
            ));
        }
        config.memory_limit_mb = Some(mb);
    }
    let process_only = |key: &'static str| {
        (
            key,
            "applies to isolation = \"process\" only (a platform in the gateway's process is never sandboxed)".to_owned(),
        )
    };
    if let Some(v) = table.remove("sandbox") {
        if config.isolation != Isolation::Process {
            return Err(process_only("sandbox"));
        }
        config.sandbox = v.try_into().map_err(|_| {
            (
                "sandbox",
                "expected \"strict\", \"best-effort\" or \"off\"".to_owned(),
            )
        })?;
    }
    if let Some(v) = table.remove("grants") {
        if config.isolation != Isolation::Process {
            return Err(process_only("grants"));
        }
        config.grants = v
            .try_into()
            .map_err(|e: toml::de::Error| ("grants", e.message().to_owned()))?;
    }
    if let Some(v) = table.remove("fallback") {
        config.fallback = v
            .try_into()
            .map_err(|_| ("fallback", "expected \"refuse\" or \"text\"".to_owned()))?;
    }
    if let Some(v) = table.remove("delivery") {
        let limits: crate::delivery::policy::Limits = v
            .try_into()
            .map_err(|e: toml::de::Error| ("delivery", e.message().to_owned()))?;
        limits
            .check()
            .map_err(|(key, message)| ("delivery", format!("key `{key}`: {message}")))?;
        config.delivery = limits;
    }
    config.senders = Senders::from_table(&mut table)?;
    config.plugin = table;
    Ok(config)
}

/// A variable of a platform's environment config that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {var}: {message}")]
pub struct EnvConfigError {
    /// The variable.
    pub var: String,
    /// What is wrong with it.
    pub message: String,
}

/// The prefix of a platform's variables: `HERMES_<ID>_`, the id upper-cased, `-` as `_`.
pub fn env_prefix(id: &str) -> String {
    format!("HERMES_{}_", id.to_ascii_uppercase().replace('-', "_"))
}

/// A platform's `[platforms.<id>]` table from the environment, for a platform that its
/// manifest's `enable_when` enables without a table in hermes.toml: each
/// `HERMES_<ID>_<KEY>=value` becomes `key = value` (the key lower-cased). A value that reads as
/// a TOML value (a number, a boolean, an array, an inline table, a quoted string) is that value;
/// anything else is a string. `None` when no such variable is set.
pub fn from_env(id: &str) -> Result<Option<PlatformConfig>, EnvConfigError> {
    from_vars(
        id,
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}

/// A platform's table in force, the one rule for start-up, `plugin reload` and a config reload:
/// hermes.toml's `[platforms.<id>]` when it has one; otherwise, for a platform whose manifest's
/// `enable_when` holds, the environment's `HERMES_<ID>_*` variables ([`from_env`]; `None`, meaning
/// the defaults, when none is set); otherwise `None` (not configured).
///
/// A table that sets neither `allowed_users` nor `allow_all_users` takes the environment's
/// `<ID>_ALLOWED_USERS` / `<ID>_ALLOW_ALL_USERS` ([`Senders::from_env`]).
pub fn effective_table(
    id: &str,
    file: Option<&PlatformConfig>,
    enabled_by_env: bool,
) -> Result<Option<PlatformConfig>, EnvConfigError> {
    let mut table = match file {
        Some(table) => table.clone(),
        None if enabled_by_env => from_env(id)?.unwrap_or_default(),
        None => return Ok(None),
    };
    if table.senders == Senders::Unset {
        table.senders = Senders::from_env(id)?;
    }
    Ok(Some(table))
}

/// [`from_env`] over `vars`.
fn from_vars(
    id: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Option<PlatformConfig>, EnvConfigError> {
    let prefix = env_prefix(id);
    let mut table = toml::Table::new();
    let mut names = std::collections::BTreeMap::new();
    for (name, value) in vars {
        let Some(key) = name.strip_prefix(&prefix).filter(|k| !k.is_empty()) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        names.insert(key.clone(), name);
        table.insert(key, parsed);
    }
    if table.is_empty() {
        return Ok(None);
    }
    platform_config(table)
        .map(Some)
        .map_err(|(key, message)| EnvConfigError {
            var: names
                .get(key)
                .cloned()
                .unwrap_or_else(|| format!("{prefix}{}", key.to_ascii_uppercase())),
            message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_platform_takes_its_table_from_hermes_id_key_variables() {
        let config = from_vars(
            "my-irc",
            vars(&[
                ("HERMES_MY_IRC_SERVER", "irc.example.net:6697"),
                ("HERMES_MY_IRC_TLS", "true"),
                ("HERMES_MY_IRC_CHANNELS", r##"["#a", "#b"]"##),
                ("HERMES_MY_IRC_CALL_TIMEOUT_MS", "5000"),
                ("HERMES_OTHER_SERVER", "elsewhere"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.call_timeout, Duration::from_millis(5000));
        assert_eq!(
            config.plugin["server"].as_str(),
            Some("irc.example.net:6697")
        );
        assert_eq!(config.plugin["tls"].as_bool(), Some(true));
        assert_eq!(config.plugin["channels"].as_array().map(Vec::len), Some(2));
        assert!(!config.plugin.contains_key("call_timeout_ms"));
        assert_eq!(
            from_vars("my-irc", vars(&[("PATH", "/bin")])).unwrap(),
            None
        );
        let bad = from_vars("x", vars(&[("HERMES_X_WORKERS", "many")])).unwrap_err();
        assert_eq!(bad.var, "HERMES_X_WORKERS");
    }

    #[test]
    fn isolation_and_its_memory_limit() {
        let table = |text: &str| platform_config(toml::from_str(text).unwrap());
        let c = table("isolation = \"process\"\nmemory_limit_mb = 256").unwrap();
        assert_eq!(c.isolation, Isolation::Process);
        assert_eq!(c.memory_limit_mb, Some(256));
        assert_eq!(c.plugin_json(), "{}");
        assert_eq!(c.sandbox, crate::sandbox::Mode::BestEffort);
        let c = table(
            "isolation = \"process\"\nsandbox = \"strict\"\ngrants = { connect_ports = [7000] }",
        )
        .unwrap();
        assert_eq!(c.sandbox, crate::sandbox::Mode::Strict);
        assert_eq!(c.grants.connect_ports, [7000]);
        for (text, key) in [
            ("isolation = \"sandbox\"", "isolation"),
            ("sandbox = \"strict\"", "sandbox"),
            ("isolation = \"process\"\nsandbox = \"tight\"", "sandbox"),
            (
                "isolation = \"process\"\ngrants = { ports = [1] }",
                "grants",
            ),
            ("memory_limit_mb = 256", "memory_limit_mb"),
            (
                "isolation = \"process\"\nmemory_limit_mb = 8",
                "memory_limit_mb",
            ),
        ] {
            assert_eq!(table(text).unwrap_err().0, key, "{text}");
        }
    }
}
