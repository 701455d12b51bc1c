//! The loader's errors: each names the library and says what was wrong with it.

use std::{io, path::PathBuf, time::Duration};

use hermes_plugin_api::abi::{ABI_VERSION, LEVEL, MAGIC, level_name};

/// Why a library was refused. Nothing of a refused library stays loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The library file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The shadow copy could not be made.
    #[error("cannot make a shadow copy in {}: {source}", dir.display())]
    Shadow {
        /// The shadow directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a loadable shared object.
    #[error("{}: not a plugin library: {reason}", path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `dlopen` refused it.
    #[error("{}: dlopen failed: {message}", path.display())]
    Dlopen {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The entry symbol is missing.
    #[error("{}: no `{symbol}` symbol: not built with hermes_plugin_api::export_plugin!", path.display())]
    MissingEntry {
        /// The file.
        path: PathBuf,
        /// The symbol looked up.
        symbol: &'static str,
    },
    /// The entry function returned null.
    #[error("{}: the entry function returned no header", path.display())]
    NullHeader {
        /// The file.
        path: PathBuf,
    },
    /// The header's magic is wrong.
    #[error("{}: wrong magic {found:#018x} (expected {MAGIC:#018x}): not a hermes plugin", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the header holds.
        found: u64,
    },
    /// The plugin was built for another ABI version.
    #[error("{}: built for plugin ABI version {found}, this host speaks version {ABI_VERSION}; rebuild it against this host's hermes-plugin-api", path.display())]
    AbiVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's ABI version.
        found: u32,
    },
    /// The plugin was built for a newer level of the plugin API than this host speaks.
    #[error("{}: built for plugin API level {}, this host speaks levels 1.0 to {}; upgrade the host, or build the plugin against a hermes-plugin-api of level {} or lower", path.display(), level_name(*level), level_name(LEVEL), level_name(LEVEL))]
    NewerLevel {
        /// The file.
        path: PathBuf,
        /// The plugin's level (2 for 1.2).
        level: u32,
    },
    /// The header is smaller than this ABI's.
    #[error("{}: header is {found} bytes, expected at least {expected}", path.display())]
    HeaderSize {
        /// The file.
        path: PathBuf,
        /// The plugin's header size.
        found: u32,
        /// This host's header size.
        expected: usize,
    },
    /// The vtable's layout differs from the host's.
    #[error("{}: built against another plugin API: {summary}", path.display())]
    Layout {
        /// The file.
        path: PathBuf,
        /// One line: the path to the first difference and what differs.
        summary: String,
        /// abi_stable's description of every mismatch (`plugin check --verbose`).
        details: String,
    },
}

impl LoadError {
    pub(crate) fn io(path: &std::path::Path, source: io::Error) -> Self {
        LoadError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why a call into a plugin did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin answered with an error (a panic is one, named as such).
    #[error("{call}: {message}")]
    Plugin {
        /// The call.
        call: &'static str,
        /// The plugin's message.
        message: String,
        /// Whether the plugin said a retry may succeed.
        retryable: bool,
        /// How long the plugin asked to wait before a retry (level 1.1: a rate limit), in
        /// milliseconds (up to 49 days).
        retry_after_ms: Option<u32>,
    },
    /// The call ran for longer than its timeout (it may still be running: its result is lost).
    #[error("{call} did not return within {} ms", after.as_millis())]
    Timeout {
        /// The call.
        call: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Every worker is stuck in a call past its timeout: the instance is hung.
    #[error("the instance is hung: its calls did not return; it is being replaced")]
    Unhealthy,
    /// The call waited in the queue past its deadline and was dropped: it never ran.
    #[error("{call} waited {} ms in the queue and was not run (the plugin is busy)", waited.as_millis())]
    Expired {
        /// The call.
        call: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// The instance's queue is full: the call was refused at once.
    #[error("the plugin's queue is full ({capacity} calls waiting)")]
    QueueFull {
        /// The queue's bound.
        capacity: usize,
    },
    /// The instance is stopping or stopped.
    #[error("the instance is stopped")]
    Stopped,
    /// The plugin's process (process isolation) died; the supervisor restarts it.
    #[error("the plugin's process {exit}; it is being restarted")]
    Crashed {
        /// How it died: the signal or exit code.
        exit: String,
    },
}

impl CallError {
    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Plugin { retryable, .. } => *retryable,
            // A timed-out call failed alone; a retry may go through (it may also run twice if
            // the first attempt still completes: the plugin's message id tells).
            CallError::Timeout { .. } => true,
            // A hung instance is replaced; a queue drains: the call may go through then.
            CallError::Unhealthy
            | CallError::Stopped
            | CallError::Crashed { .. }
            | CallError::Expired { .. }
            | CallError::QueueFull { .. } => true,
        }
    }
}

/// Why an instance could not be stopped in order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// A call is still running; the library stays mapped until it returns.
    #[error("a call into the plugin has not returned; its library stays mapped")]
    Busy,
    /// Already stopped.
    #[error("the instance is already stopped")]
    AlreadyStopped,
    /// The plugin's `stop` did not return in time; its library stays mapped for good.
    #[error("the plugin's stop did not return within {} ms; its library stays mapped", after.as_millis())]
    StopTimedOut {
        /// The time it had.
        after: Duration,
    },
    /// The plugin's process (process isolation) died: there is nothing left to stop.
    #[error("the plugin's process {exit}")]
    Crashed {
        /// How it died.
        exit: String,
    },
}
