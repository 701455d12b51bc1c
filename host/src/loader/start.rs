//! Starting an instance of a loaded library: its worker threads, its callback context and the
//! plugin's `start`, which receives the previous generation's state.

use std::{
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use abi_stable::std_types::{ROption, RSlice, RStr};
use hermes_plugin_api::abi::{HostContext, PluginVTable, StateRef};

use super::{
    callbacks::{CallbackContext, EventSink},
    error::CallError,
    instance::{Instance, SendPtr},
    library::Library,
    worker::{Workers, await_answer},
};
use crate::message::PluginState;

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

/// The host context, moved into the `start` job.
struct SendHost(HostContext);

// SAFETY: the context points at a `CallbackContext`, which is `Send + Sync`.
unsafe impl Send for SendHost {}

impl SendHost {
    fn get(self) -> HostContext {
        self.0
    }
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
