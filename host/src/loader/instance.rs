//! A started plugin instance: its worker threads, its calls, and its orderly stop.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use abi_stable::std_types::{ROption, RSlice, RStr};
use hermes_plugin_api::abi::{
    HEALTH_DEGRADED, HEALTH_HEALTHY, HostContext, InstancePtr, OutboundFfi, PluginVTable, StateRef,
};

use super::{
    callbacks::{CallbackContext, EventSink},
    error::CallError,
    library::{Library, LoadedLibrary},
    worker::{CallState, Drained, Workers, await_answer, run_once},
};
use crate::message::{Health, HealthStatus, Outbound, PluginState, Receipt, limits};

/// How to start an instance.
pub struct StartOptions {
    /// The platform id (for logs, thread names and inbound messages).
    pub platform: String,
    /// The generation this instance will be.
    pub generation: u64,
    /// The platform's config table as JSON text.
    pub config_json: String,
    /// Where inbound messages and log records go.
    pub sink: Arc<dyn EventSink>,
    /// How many worker threads serve its calls (at least 1).
    pub workers: usize,
    /// How long any one call may run, and wait in the queue before it runs.
    pub call_timeout: Duration,
    /// Calls that may wait for a worker; more are refused at once.
    pub max_queue: usize,
    /// State exported by the previous generation.
    pub state: Option<PluginState>,
}

/// A failed start: the error, and the library (still loaded) to unload or try again.
#[derive(Debug)]
pub struct StartFailure {
    /// Why it failed.
    pub error: CallError,
    /// The library, whose workers are joined.
    pub library: Library,
}

/// A plugin instance, started and serving calls on its own worker threads.
pub struct Instance {
    platform: String,
    shadow_path: std::path::PathBuf,
    generation: u64,
    plugin_version: String,
    ptr: SendPtr,
    workers: Workers,
    library: Mutex<Option<Arc<LoadedLibrary>>>,
    context: Arc<CallbackContext>,
    call_timeout: Duration,
    in_flight: Arc<AtomicUsize>,
}

/// The instance pointer, moved into worker jobs.
#[derive(Clone, Copy)]
struct SendPtr(InstancePtr);

// SAFETY: the pointer is only dereferenced by the plugin's own functions, which the `Plugin`
// trait requires to be `Send + Sync`.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: the plugin's value is `Sync`, and the pointer itself is never written.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Takes the pointer out; a method, so closures capture the whole `Send` wrapper.
    fn get(self) -> InstancePtr {
        self.0
    }
}

/// The host context, moved into the `start` job.
struct SendHost(HostContext);

// SAFETY: the context points at a `CallbackContext`, which is `Send + Sync`.
unsafe impl Send for SendHost {}

impl SendHost {
    fn get(self) -> HostContext {
        self.0
    }
}

/// A stopped instance: its library (loaded, workers joined) and what it exported.
#[derive(Debug)]
pub struct Stopped {
    /// The library, ready to unload or start again.
    pub library: Library,
    /// State the instance exported before `stop`, when asked and offered.
    pub state: Option<PluginState>,
    /// An error from `export_state` or `stop` (the instance is stopped all the same).
    pub error: Option<CallError>,
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
}

impl Library {
    /// Starts an instance on new worker threads. On failure the workers are joined and the
    /// library comes back, still loaded.
    pub fn start(self, options: StartOptions) -> Result<Instance, StartFailure> {
        let context = CallbackContext::new(
            &options.platform,
            options.generation,
            Arc::clone(&options.sink),
        );
        self.inner
            .contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&context));
        self.inner
            .threads_before_start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| super::maps::thread_ids().unwrap_or_default());
        let name = format!("hermes-{}-g{}", options.platform, options.generation);
        let workers = match Workers::spawn(&self.inner, &name, options.workers, options.max_queue) {
            Ok(w) => w,
            Err(e) => {
                let message = format!("cannot start worker threads: {e}");
                return Err(StartFailure {
                    error: CallError::Plugin {
                        call: "start",
                        message,
                        retryable: true,
                    },
                    library: self,
                });
            }
        };
        let host = SendHost(context.host_context());
        let config = options.config_json;
        let state = options.state;
        let started = call_on(&workers, "start", options.call_timeout, move |vtable| {
            let state_ref = state.as_ref().map(|s| StateRef {
                schema: s.schema,
                bytes: RSlice::from_slice(&s.bytes),
            });
            // SAFETY: the config and state are borrowed for the call; `host` stays valid until
            // the library is unloaded (the library keeps its context).
            let result = unsafe {
                (vtable.start)(
                    RStr::from_str(&config),
                    host.get(),
                    ROption::from(state_ref),
                )
            };
            result
                .into_result()
                .map(SendPtr)
                .map_err(|e| e.into_string())
        });
        let failure = match started {
            Ok(Ok(ptr)) => {
                return Ok(Instance {
                    platform: options.platform,
                    shadow_path: self.shadow_path().to_owned(),
                    generation: options.generation,
                    plugin_version: self.plugin_version().to_owned(),
                    ptr,
                    workers,
                    library: Mutex::new(Some(Arc::clone(&self.inner))),
                    context,
                    call_timeout: options.call_timeout,
                    in_flight: Arc::new(AtomicUsize::new(0)),
                });
            }
            Ok(Err(message)) => CallError::Plugin {
                call: "start",
                message,
                retryable: false,
            },
            Err(e) => e,
        };
        context.deactivate();
        let _ = workers.drain(Instant::now() + Duration::from_secs(1));
        Err(StartFailure {
            error: failure,
            library: self,
        })
    }
}

/// Submits `f` to the pool and waits up to `timeout` for its answer.
fn call_on<R: Send + 'static>(
    workers: &Workers,
    call: &'static str,
    timeout: Duration,
    f: impl FnOnce(&PluginVTable) -> R + Send + 'static,
) -> Result<R, CallError> {
    let (tx, rx) = oneshot::channel();
    workers.submit(Box::new(move |vtable| {
        let _ = tx.send(f(vtable));
    }))?;
    match await_answer(&rx, timeout) {
        Ok(r) => Ok(r),
        Err(oneshot::RecvTimeoutError::Timeout) => Err(CallError::Timeout {
            call,
            after: timeout,
        }),
        Err(oneshot::RecvTimeoutError::Disconnected) => Err(CallError::Stopped),
    }
}

impl Instance {
    /// The platform id.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// This instance's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The loaded library's own version.
    pub fn plugin_version(&self) -> &str {
        &self.plugin_version
    }

    /// The shadow copy this instance's library was loaded from.
    pub fn shadow_path(&self) -> &std::path::Path {
        &self.shadow_path
    }

    /// Calls running or queued right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// From now on, this instance's `deliver` and `log` callbacks are refused: it no longer
    /// serves (replaced, stopping, hung). The plugin sees the refusal as `deliver`'s error.
    pub fn retire(&self) {
        self.context.retire();
    }

    /// Whether the instance is hung: every worker is inside a call that has run for longer
    /// than the call timeout, so no call can be taken. New calls are refused (503, retryable)
    /// until the supervisor replaces it, or a stuck call returns.
    pub fn is_hung(&self) -> bool {
        self.workers.all_stuck(self.call_timeout)
    }

    /// Queues `f` on the workers, counted in flight until the plugin returns (or the call is
    /// dropped unrun); the answer comes through the returned receiver.
    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&PluginVTable, InstancePtr) -> R + Send + 'static,
    ) -> Result<(oneshot::Receiver<R>, Arc<CallState>), CallError> {
        if self.is_hung() {
            return Err(CallError::Unhealthy);
        }
        let ptr = self.ptr;
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(in_flight);
        let (tx, rx) = oneshot::channel();
        let state = CallState::new();
        let job_state = Arc::clone(&state);
        self.workers.submit(Box::new(move |vtable| {
            let guard = guard;
            // Its caller gave up while it waited: it never runs.
            if !job_state.start() {
                return;
            }
            let r = f(vtable, ptr.get());
            drop(guard);
            let _ = tx.send(r);
        }))?;
        Ok((rx, state))
    }

    /// After the queue deadline passed without an answer: the call is dropped if it is still
    /// queued (`Expired`), otherwise the time left from its start.
    fn queue_deadline_passed(
        &self,
        call: &'static str,
        state: &CallState,
    ) -> Result<Instant, CallError> {
        if state.cancel() {
            return Err(CallError::Expired {
                call,
                waited: self.call_timeout,
            });
        }
        Ok(state.started().unwrap_or_else(Instant::now) + self.call_timeout)
    }

    /// A call ran past its timeout: it fails alone (the instance is hung only once every
    /// worker is stuck, see [`Instance::is_hung`]).
    fn timed_out(&self, call: &'static str) -> CallError {
        tracing::warn!(platform = %self.platform, generation = self.generation, call, timeout_ms = self.call_timeout.as_millis() as u64, "plugin call timed out");
        CallError::Timeout {
            call,
            after: self.call_timeout,
        }
    }

    /// A call, waiting on this thread: up to the call timeout for a worker to take it, then up
    /// to the call timeout from when it started.
    fn call<R: Send + 'static>(
        &self,
        call: &'static str,
        f: impl FnOnce(&PluginVTable, InstancePtr) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let (rx, state) = self.submit(f)?;
        match await_answer(&rx, self.call_timeout) {
            Ok(r) => return Ok(r),
            Err(oneshot::RecvTimeoutError::Disconnected) => return Err(CallError::Stopped),
            Err(oneshot::RecvTimeoutError::Timeout) => {}
        }
        let deadline = self.queue_deadline_passed(call, &state)?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => Ok(r),
            Err(oneshot::RecvTimeoutError::Timeout) => Err(self.timed_out(call)),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(CallError::Stopped),
        }
    }

    /// Sends one message through the plugin, waiting on this thread.
    pub fn send(&self, message: &Outbound) -> Result<Receipt, CallError> {
        let result = self.call("send", send_job(message.clone()))?;
        result.map_err(|(message, retryable)| CallError::Plugin {
            call: "send",
            message,
            retryable,
        })
    }

    /// Sends one message through the plugin, awaiting the answer without blocking the
    /// runtime's thread.
    pub async fn send_async(&self, message: &Outbound) -> Result<Receipt, CallError> {
        let result = self.call_async("send", send_job(message.clone())).await?;
        result.map_err(|(message, retryable)| CallError::Plugin {
            call: "send",
            message,
            retryable,
        })
    }

    async fn call_async<R: Send + 'static>(
        &self,
        call: &'static str,
        f: impl FnOnce(&PluginVTable, InstancePtr) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let (rx, state) = self.submit(f)?;
        // Let the runtime run whatever else is ready first: a worker that is awake answers in
        // a few microseconds, and an answer already there needs no wake-up of this thread.
        tokio::task::yield_now().await;
        if let Ok(r) = rx.try_recv() {
            return Ok(r);
        }
        let mut rx = std::future::IntoFuture::into_future(rx);
        match tokio::time::timeout(self.call_timeout, &mut rx).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(_)) => return Err(CallError::Stopped),
            Err(_) => {}
        }
        let deadline = self.queue_deadline_passed(call, &state)?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Stopped),
            Err(_) => Err(self.timed_out(call)),
        }
    }

    /// Asks the plugin how it is doing.
    pub fn health(&self) -> Result<Health, CallError> {
        self.call("health", health_job)?.map_err(health_error)
    }

    /// Asks the plugin how it is doing, without blocking the runtime's thread; `within` bounds
    /// the wait (a busy or hung plugin does not hold up a status page).
    pub async fn health_async(&self, within: Duration) -> Result<Health, CallError> {
        match tokio::time::timeout(within, self.call_async("health", health_job)).await {
            Ok(result) => result?.map_err(health_error),
            Err(_) => Err(CallError::Timeout {
                call: "health",
                after: within,
            }),
        }
    }

    /// Benchmark support: makes `n` back-to-back raw FFI `health` calls inside one job on a
    /// worker thread and returns their total time, so the FFI call can be measured without the
    /// worker hop and without breaking the rule that only workers call the plugin.
    #[doc(hidden)]
    pub fn time_raw_health_calls(&self, n: u32) -> Result<Duration, CallError> {
        self.call("health", move |vtable, ptr| {
            let started = Instant::now();
            for _ in 0..n {
                // SAFETY: as in `send`.
                let result = unsafe { (vtable.health)(std::hint::black_box(ptr)) };
                drop(std::hint::black_box(result));
            }
            started.elapsed()
        })
    }

    /// Stops the instance in the order the loader's invariants demand: refuse new calls, drain
    /// and join the workers, export state (if asked) and `stop` on a fresh host thread joined
    /// right after, then retire the callback context. The library comes back loaded.
    pub fn stop(&self, export_state: bool, timeout: Duration) -> Result<Stopped, StopError> {
        let library = self
            .library
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(StopError::AlreadyStopped)?;
        let deadline = Instant::now() + timeout;
        if let Drained::Busy = self.workers.drain(deadline) {
            // A call is still running (new ones are refused now). The library stays mapped and
            // stays ours, so a later `stop` can finish the job once the call returns.
            *self.library.lock().unwrap_or_else(|e| e.into_inner()) = Some(library);
            return Err(StopError::Busy);
        }
        // No longer serving: whatever its threads deliver from here on is refused.
        self.retire();
        let ptr = self.ptr;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let outcome = run_once(&library, "stop", left, move |vtable| {
            let mut error = None;
            let mut state = None;
            if export_state {
                // SAFETY: every other call has returned (the pool is joined); `stop` is next.
                match unsafe { (vtable.export_state)(ptr.get()) }.into_result() {
                    Ok(s) => {
                        state = s.into_option().map(|s| PluginState {
                            schema: s.schema,
                            bytes: s.bytes.to_vec(),
                        })
                    }
                    Err(e) => error = Some(("export_state", e.into_string())),
                }
            }
            // SAFETY: the instance pointer is used here for the last time.
            if let Err(e) = unsafe { (vtable.stop)(ptr.get()) }.into_result() {
                error = Some(("stop", e.into_string()));
            }
            (state, error)
        });
        self.context.deactivate();
        match outcome {
            Ok((state, error)) => Ok(Stopped {
                library: Library { inner: library },
                state,
                error: error.map(|(call, message)| CallError::Plugin {
                    call,
                    message,
                    retryable: false,
                }),
            }),
            Err(_) => Err(StopError::StopTimedOut { after: left }),
        }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("platform", &self.platform)
            .field("generation", &self.generation)
            .field("version", &self.plugin_version)
            .finish()
    }
}

/// The `health` job: the call and the conversion to std types, on the worker.
fn health_job(vtable: &PluginVTable, ptr: InstancePtr) -> Result<Health, String> {
    // SAFETY: `ptr` came from this library's `start` and `stop` has not run (see `send_job`).
    let result = unsafe { (vtable.health)(ptr) };
    // Converted here, on the worker: the RStrings are freed by the plugin's allocator.
    match result.into_result() {
        Ok(h) => Ok(Health {
            status: match h.status {
                HEALTH_HEALTHY => HealthStatus::Healthy,
                HEALTH_DEGRADED => HealthStatus::Degraded,
                _ => HealthStatus::Unhealthy,
            },
            detail: limits::cut(h.detail.into_string(), limits::ERROR_BYTES),
        }),
        Err(e) => Err(limits::cut(e.into_string(), limits::ERROR_BYTES)),
    }
}

fn health_error(message: String) -> CallError {
    CallError::Plugin {
        call: "health",
        message,
        retryable: false,
    }
}

/// The `send` job: builds the FFI message, calls the plugin, converts the answer to std types
/// while the library is certainly loaded (the `RString`s are freed by the plugin's allocator).
fn send_job(
    message: Outbound,
) -> impl FnOnce(&PluginVTable, InstancePtr) -> Result<Receipt, (String, bool)> + Send + 'static {
    move |vtable, ptr| {
        let metadata = serde_json::Value::Object(message.metadata).to_string();
        let ffi = OutboundFfi {
            chat_id: RStr::from_str(&message.chat_id),
            text: RStr::from_str(&message.text),
            reply_to: message.reply_to.as_deref().map(RStr::from_str).into(),
            metadata_json: RStr::from_str(&metadata),
        };
        // SAFETY: `ptr` came from this library's `start` and `stop` has not run: the pool is
        // closed before `stop`, and this job was queued before that.
        let result = unsafe { (vtable.send)(ptr, &ffi) };
        match result.into_result() {
            Ok(r) => Ok(Receipt {
                message_id: limits::cut(r.message_id.into_string(), limits::MESSAGE_ID_BYTES),
            }),
            Err(e) => Err((
                limits::cut(e.message.into_string(), limits::ERROR_BYTES),
                e.retryable,
            )),
        }
    }
}

/// Counts a call as in flight until the plugin returns (or the job is dropped unrun).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
