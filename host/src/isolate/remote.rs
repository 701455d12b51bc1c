//! The gateway's side of an isolated platform: a child process holding the library
//! ([`RemoteLibrary`]), and the instance started in it ([`RemoteInstance`]). They mirror the
//! loader's `Library` and `Instance`, so the registry's transactions (load, reload, unload) run
//! the same steps on either.
//!
//! Each child has two threads here: a reader, which routes replies to their callers and the
//! plugin's deliveries and logs to the sink, and a waiter, which reaps the child
//! (`Child::wait`, no polling) and then fails every call in flight with the signal or exit code.
//! A death the gateway did not ask for is a crash, reported to the sink; signals go through a
//! pidfd, so a reaped child's pid, reused by another process, is never signalled.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{
    conn::{Conn, Spawn},
    wire::{self, Call, Reply, StartCall},
};
use crate::{
    loader::{CallError, EventSink, StartOptions, StopError, UnloadReport},
    message::{Health, Outbound, PluginState, Receipt},
};

/// How long the child may take to open the library (a constructor that hangs is killed).
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A library opened in a child process.
pub struct RemoteLibrary {
    conn: Arc<Conn>,
    version: String,
    level: u32,
    source: PathBuf,
}

/// Why a child could not open a library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("isolated child for `{platform}`: {message}")]
pub struct ChildError {
    /// The platform.
    pub platform: String,
    /// What went wrong: the loader's error, or how the child died.
    pub message: String,
}

impl RemoteLibrary {
    /// Starts a child and has it open `path` (its shadow copy under `spawn.shadow_root`).
    pub fn open(
        spawn: &Spawn,
        sink: Arc<dyn EventSink>,
        path: &Path,
    ) -> Result<RemoteLibrary, ChildError> {
        let error = |message: String| ChildError {
            platform: spawn.platform.clone(),
            message,
        };
        let conn = Conn::spawn(spawn, sink).map_err(|e| {
            error(format!(
                "cannot start {} __isolate: {e}",
                spawn.program.display()
            ))
        })?;
        let opened = conn.call_blocking(
            "open",
            Call::Open {
                path: path.display().to_string(),
            },
            OPEN_TIMEOUT,
        );
        let failed = |message: String| {
            conn.finish();
            Err(error(message))
        };
        match opened {
            Ok(Reply::Opened(Ok(opened))) => {
                let _ = conn.sandbox.set(opened.sandbox);
                Ok(RemoteLibrary {
                    conn,
                    version: opened.version,
                    level: opened.level,
                    source: path.to_owned(),
                })
            }
            Ok(Reply::Opened(Err(message))) => failed(message),
            Ok(other) => failed(format!("unexpected reply {other:?}")),
            Err(CallError::Crashed { exit }) => Err(error(format!(
                "the child {exit} while loading {}",
                path.display()
            ))),
            Err(e) => failed(e.to_string()),
        }
    }

    /// The library's own version.
    pub fn plugin_version(&self) -> &str {
        &self.version
    }

    /// The plugin API level the library was built for (0 for 1.0, 1 for 1.1).
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The plugin's `validate_config`, in the child.
    pub fn validate_config(&self, config_json: &str, timeout: Duration) -> Result<(), CallError> {
        let call = Call::ValidateConfig {
            config_json: config_json.to_owned(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self
            .conn
            .call_blocking("validate_config", call, grace(timeout))?
        {
            Reply::Done(result) => result.map_err(Into::into),
            other => Err(unexpected("validate_config", &other)),
        }
    }

    /// Starts an instance in the child. On failure the library comes back, still open.
    pub fn start(
        self,
        options: StartOptions,
    ) -> Result<RemoteInstance, (CallError, RemoteLibrary)> {
        self.conn
            .generation
            .store(options.generation, Ordering::Release);
        self.conn.serving.store(true, Ordering::Release);
        let call = Call::Start(StartCall {
            platform: options.platform,
            generation: options.generation,
            config_json: options.config_json,
            workers: options.workers as u32,
            call_timeout_ms: options.call_timeout.as_millis() as u64,
            max_queue: options.max_queue as u64,
            state: options.state.clone().map(Into::into),
            data_dir: options
                .data_dir
                .as_deref()
                .and_then(|d| d.to_str())
                .unwrap_or_default()
                .to_owned(),
            max_attachment_bytes: options.max_attachment_bytes,
        });
        let result = match self
            .conn
            .call_blocking("start", call, grace(options.call_timeout))
        {
            Ok(Reply::Done(result)) => result.map_err(CallError::from),
            Ok(other) => Err(unexpected("start", &other)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(RemoteInstance {
                conn: self.conn,
                generation: options.generation,
                plugin_version: self.version,
                level: self.level,
                source: self.source,
                call_timeout: options.call_timeout,
                in_flight: AtomicUsize::new(0),
                started_with: options.state,
            }),
            Err(e) => {
                self.conn.serving.store(false, Ordering::Release);
                Err((e, self))
            }
        }
    }

    /// Unloads the library and ends the child.
    pub fn unload(self) -> UnloadReport {
        self.conn.finish()
    }
}

/// An instance running in a child process.
pub struct RemoteInstance {
    conn: Arc<Conn>,
    generation: u64,
    plugin_version: String,
    level: u32,
    source: PathBuf,
    call_timeout: Duration,
    in_flight: AtomicUsize,
    /// The state it started with: what a restart after a crash hands to the next generation.
    started_with: Option<PluginState>,
}

/// What a stopped remote instance leaves: the child with its library still open.
pub struct RemoteStopped {
    /// The library, ready to unload or start again.
    pub library: RemoteLibrary,
    /// Exported state.
    pub state: Option<PluginState>,
    /// An error from `export_state` or `stop`.
    pub error: Option<CallError>,
}

impl RemoteInstance {
    /// What its child's sandbox enforces, as the child reported it with the opened library.
    pub fn sandbox(&self) -> Option<crate::sandbox::Enforced> {
        self.conn.sandbox.get().cloned()
    }

    /// The platform id.
    pub fn platform(&self) -> &str {
        &self.conn.platform
    }

    /// This instance's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The library's own version.
    pub fn plugin_version(&self) -> &str {
        &self.plugin_version
    }

    /// The plugin API level its library was built for.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.conn.pid
    }

    /// Calls sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Deliveries from now on are refused.
    pub fn retire(&self) {
        self.conn.serving.store(false, Ordering::Release);
    }

    /// How the child died, if it did.
    pub fn crashed(&self) -> Option<String> {
        self.conn.exit()
    }

    /// The state this instance started with: what a restart after its crash hands on.
    pub fn last_state(&self) -> Option<PluginState> {
        self.started_with.clone()
    }

    /// Kills the child without counting a crash (it is being replaced).
    pub fn kill_replaced(&self, why: &str) {
        self.conn.expected.store(true, Ordering::Release);
        self.conn.kill(why);
    }

    fn counted(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.in_flight)
    }

    /// Sends a message, waiting on this thread.
    pub fn send(&self, message: &Outbound) -> Result<Receipt, CallError> {
        let _counted = self.counted();
        let reply =
            self.conn
                .call_blocking("send", Call::Send(message.into()), grace(self.call_timeout));
        sent(reply)
    }

    /// Sends a message, awaiting the answer.
    pub async fn send_async(&self, message: &Outbound) -> Result<Receipt, CallError> {
        let _counted = self.counted();
        let reply = self
            .conn
            .call_async("send", Call::Send(message.into()), grace(self.call_timeout))
            .await;
        sent(reply)
    }

    /// The plugin's health, waiting on this thread.
    pub fn health(&self) -> Result<Health, CallError> {
        let _counted = self.counted();
        let reply = self
            .conn
            .call_blocking("health", Call::Health, grace(self.call_timeout));
        health(reply)
    }

    /// The plugin's health; `within` bounds the wait (the child is not killed for it).
    pub async fn health_async(&self, within: Duration) -> Result<Health, CallError> {
        let _counted = self.counted();
        let rx = self.conn.request(Call::Health)?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => health(Ok(reply)),
            Ok(Err(_)) => Err(self.conn.crashed_error()),
            Err(_) => Err(CallError::Timeout {
                call: "health",
                after: within,
            }),
        }
    }

    /// Benchmark support: `n` raw FFI `health` calls in one job in the child.
    pub fn time_raw_health_calls(&self, n: u32) -> Result<Duration, CallError> {
        match self
            .conn
            .call_blocking("health", Call::RawHealth { n }, grace(self.call_timeout))?
        {
            Reply::Timed(result) => result.map(Duration::from_nanos).map_err(Into::into),
            other => Err(unexpected("health", &other)),
        }
    }

    /// Stops the instance in the child (which keeps its library open for an unload or a new
    /// start); a dead child cannot stop: [`StopError::Crashed`].
    pub fn stop(&self, export_state: bool, timeout: Duration) -> Result<RemoteStopped, StopError> {
        self.retire();
        let call = Call::Stop {
            export_state,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.conn.call_blocking("stop", call, grace(timeout)) {
            Ok(Reply::Stopped(Ok(stopped))) => Ok(RemoteStopped {
                library: RemoteLibrary {
                    conn: Arc::clone(&self.conn),
                    version: self.plugin_version.clone(),
                    level: self.level,
                    source: self.source.clone(),
                },
                state: stopped.state.map(Into::into),
                error: stopped.error.map(Into::into),
            }),
            Ok(Reply::Stopped(Err(e))) => Err(e.into()),
            Ok(_) => Err(StopError::AlreadyStopped),
            Err(CallError::Timeout { after, .. }) => Err(StopError::StopTimedOut { after }),
            Err(_) => Err(StopError::Crashed {
                exit: self
                    .conn
                    .exit()
                    .unwrap_or_else(|| "closed its connection".into()),
            }),
        }
    }
}

impl std::fmt::Debug for RemoteInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteInstance")
            .field("platform", &self.conn.platform)
            .field("pid", &self.conn.pid)
            .field("generation", &self.generation)
            .finish()
    }
}

impl std::fmt::Debug for RemoteLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLibrary")
            .field("platform", &self.conn.platform)
            .field("pid", &self.conn.pid)
            .finish()
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long the gateway waits for a call's answer before it kills the child: a call may wait
/// `call_timeout_ms` in the child's queue and run as long again, as in process.
fn grace(timeout: Duration) -> Duration {
    timeout * 2
}

fn unexpected(call: &'static str, reply: &Reply) -> CallError {
    CallError::Plugin {
        call,
        message: format!("the child answered {reply:?}"),
        retryable: false,
        retry_after_ms: None,
    }
}

fn sent(reply: Result<Reply, CallError>) -> Result<Receipt, CallError> {
    match reply? {
        Reply::Sent(result) => result
            .map(|message_id| Receipt { message_id })
            .map_err(Into::into),
        other => Err(unexpected("send", &other)),
    }
}

fn health(reply: Result<Reply, CallError>) -> Result<Health, CallError> {
    match reply? {
        Reply::Health(result) => result.map(wire::health_from_wire).map_err(Into::into),
        other => Err(unexpected("health", &other)),
    }
}
