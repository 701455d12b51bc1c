//! A started plugin instance: its worker threads, its calls, and its orderly stop.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hermes_plugin_api::abi::InstancePtr;

use super::{
    callbacks::CallbackContext,
    error::{CallError, StopError},
    header::Fns,
    jobs::{health_error, health_job, send_job},
    library::{Library, LoadedLibrary},
    worker::{CallState, Drained, Workers, await_answer, run_once},
};
use crate::message::{Health, Outbound, PluginState, Receipt};

/// A plugin instance, started and serving calls on its own worker threads.
pub struct Instance {
    pub(super) platform: String,
    pub(super) shadow_path: std::path::PathBuf,
    pub(super) generation: u64,
    pub(super) plugin_version: String,
    pub(super) ptr: SendPtr,
    pub(super) workers: Workers,
    /// The plugin API level of its library.
    pub(super) level: u32,
    pub(super) library: Mutex<Option<Arc<LoadedLibrary>>>,
    pub(super) context: Arc<CallbackContext>,
    pub(super) call_timeout: Duration,
    pub(super) in_flight: Arc<AtomicUsize>,
}

/// The instance pointer, moved into worker jobs.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) InstancePtr);

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

    /// The plugin API level its library was built for (0 for 1.0, 1 for 1.1).
    pub fn level(&self) -> u32 {
        self.level
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
        f: impl FnOnce(Fns<'_>, InstancePtr) -> R + Send + 'static,
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

    /// Queues `f` on the workers and hands its result to `then` on the worker that ran it, so
    /// no thread waits for the answer. `then` runs exactly once: with the error at once when
    /// the call cannot be queued. No timeout applies here (the isolated child's gateway times
    /// its calls and kills the child).
    fn submit_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(Fns<'_>, InstancePtr) -> Result<R, CallError> + Send + 'static,
        then: impl FnOnce(Result<R, CallError>) + Send + 'static,
    ) {
        if self.is_hung() {
            return then(Err(CallError::Unhealthy));
        }
        // The job takes `then` when it runs; a job that could not be queued leaves it here.
        let slot = Arc::new(Mutex::new(Some(then)));
        let job_slot = Arc::clone(&slot);
        let ptr = self.ptr;
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(in_flight);
        let submitted = self.workers.submit(Box::new(move |vtable| {
            let r = f(vtable, ptr.get());
            drop(guard);
            let then = job_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(then) = then {
                then(r);
            }
        }));
        if let Err(e) = submitted {
            let then = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(then) = then {
                then(Err(e));
            }
        }
    }

    /// Sends one message on a worker and hands the result to `then` there (see
    /// `submit_then`): the isolated child writes its reply from the worker.
    pub fn send_then(
        &self,
        message: Outbound,
        then: impl FnOnce(Result<Receipt, CallError>) + Send + 'static,
    ) {
        let job = send_job(message);
        self.submit_then(job, then);
    }

    /// Asks the plugin's health on a worker and hands the answer to `then` there.
    pub fn health_then(&self, then: impl FnOnce(Result<Health, CallError>) + Send + 'static) {
        self.submit_then(
            |vtable, ptr| health_job(vtable, ptr).map_err(health_error),
            then,
        );
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
        f: impl FnOnce(Fns<'_>, InstancePtr) -> R + Send + 'static,
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
        self.call("send", send_job(message.clone()))?
    }

    /// Sends one message through the plugin, awaiting the answer without blocking the
    /// runtime's thread.
    pub async fn send_async(&self, message: &Outbound) -> Result<Receipt, CallError> {
        self.call_async("send", send_job(message.clone())).await?
    }

    async fn call_async<R: Send + 'static>(
        &self,
        call: &'static str,
        f: impl FnOnce(Fns<'_>, InstancePtr) -> R + Send + 'static,
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
                let result = unsafe { (vtable.base.health)(std::hint::black_box(ptr)) };
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
                match unsafe { (vtable.base.export_state)(ptr.get()) }.into_result() {
                    Ok(s) => {
                        state = s.into_option().map(|s| PluginState {
                            schema: s.schema,
                            bytes: s.bytes.to_vec(),
                        });
                    }
                    Err(e) => error = Some(("export_state", e.into_string())),
                }
            }
            // SAFETY: the instance pointer is used here for the last time.
            if let Err(e) = unsafe { (vtable.base.stop)(ptr.get()) }.into_result() {
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
                    retry_after_ms: None,
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

/// Counts a call as in flight until the plugin returns (or the job is dropped unrun).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
