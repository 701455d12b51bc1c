//! Starting an instance of a loaded library: its worker threads, its callback context and the
//! plugin's `start`, which receives the previous generation's state.

use std::{
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use abi_stable::std_types::{ROption, RSlice, RStr};
use hermes_plugin_api::abi::{HostContext, HostV1_1, StateRef};

use super::{
    callbacks::{CallbackContext, EventSink},
    error::CallError,
    header::Fns,
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
    /// The platform's own folder, handed to a level-1.1 plugin (`Host::data_dir`).
    pub data_dir: Option<std::path::PathBuf>,
    /// The largest attachment the host hands over or accepts, told to a level-1.1 plugin.
    pub max_attachment_bytes: u64,
}

impl StartOptions {
    /// Generation `generation` of `platform` with `config_json`, events to `sink`: two workers,
    /// a 30 s call timeout, a queue of 1024, no previous state, no data folder, attachments up
    /// to the host's cap. Tools, tests and benchmarks change what they need.
    pub fn new(
        platform: &str,
        generation: u64,
        config_json: impl Into<String>,
        sink: Arc<dyn EventSink>,
    ) -> Self {
        StartOptions {
            platform: platform.to_owned(),
            generation,
            config_json: config_json.into(),
            sink,
            workers: 2,
            call_timeout: crate::config::DEFAULT_CALL_TIMEOUT,
            max_queue: 1024,
            state: None,
            data_dir: None,
            max_attachment_bytes: crate::message::limits::ATTACHMENT_BYTES,
        }
    }
}

/// A failed start: the error, and the library (still loaded) to unload or try again.
#[derive(Debug)]
pub struct StartFailure {
    /// Why it failed.
    pub error: CallError,
    /// The library, whose workers are joined.
    pub library: Library,
}

/// The host context (and its level-1.1 part), moved into the `start` job.
struct SendHost(HostContext, HostV1_1);

// SAFETY: the context points at a `CallbackContext`, which is `Send + Sync`; the level-1.1
// part borrows a string of that same context.
unsafe impl Send for SendHost {}

impl SendHost {
    fn get(self) -> (HostContext, HostV1_1) {
        (self.0, self.1)
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
            options.data_dir.as_deref(),
            options.max_attachment_bytes,
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
        let workers = match Workers::spawn(
            &self.inner,
            options.generation,
            &name,
            options.workers,
            options.max_queue,
        ) {
            Ok(w) => w,
            Err(e) => {
                let message = format!("cannot start worker threads: {e}");
                return Err(StartFailure {
                    error: CallError::Plugin {
                        call: "start",
                        message,
                        retryable: true,
                        retry_after_ms: None,
                    },
                    library: self,
                });
            }
        };
        let host = SendHost(context.host_context(), context.host_v1_1());
        let config = options.config_json;
        let state = options.state;
        let (tx, rx) = oneshot::channel();
        let submitted = workers.submit(Box::new(move |vtable: Fns<'_>| {
            let state_ref = ROption::from(state.as_ref().map(|s| StateRef {
                schema: s.schema,
                bytes: RSlice::from_slice(&s.bytes),
            }));
            let config = RStr::from_str(&config);
            let (host, host_v1_1) = host.get();
            // SAFETY: the config and state are borrowed for the call; `host` and `host_v1_1`
            // stay valid until the library is unloaded (the library keeps its context).
            let result = unsafe {
                match vtable.v1_1 {
                    Some(v1_1) => (v1_1.start)(config, host, host_v1_1, state_ref),
                    None => (vtable.base.start)(config, host, state_ref),
                }
            };
            let _ = tx.send(
                result
                    .into_result()
                    .map(SendPtr)
                    .map_err(|e| e.into_string()),
            );
        }));
        let started = match submitted {
            Ok(()) => match await_answer(&rx, options.call_timeout) {
                Ok(answer) => Ok(answer),
                Err(oneshot::RecvTimeoutError::Timeout) => Err(CallError::Timeout {
                    call: "start",
                    after: options.call_timeout,
                }),
                Err(oneshot::RecvTimeoutError::Disconnected) => Err(CallError::Stopped),
            },
            Err(e) => Err(e),
        };
        let parts = Parts {
            platform: options.platform,
            shadow_path: self.shadow_path().to_owned(),
            generation: options.generation,
            plugin_version: self.plugin_version().to_owned(),
            workers,
            library: Arc::clone(&self.inner),
            context: Arc::clone(&context),
            call_timeout: options.call_timeout,
        };
        let failure = match started {
            Ok(Ok(ptr)) => return Ok(parts.into_instance(ptr)),
            Ok(Err(message)) => CallError::Plugin {
                call: "start",
                message,
                retryable: false,
                retry_after_ms: None,
            },
            Err(timeout @ CallError::Timeout { .. }) => {
                // `start` runs on past its timeout: whatever it delivers is refused from now
                // on, and once it returns, what it started is stopped and the library unloaded
                // (by whoever lets go of it last), instead of living on unseen.
                context.deactivate();
                LateStart { answer: rx, parts }.reap();
                return Err(StartFailure {
                    error: timeout,
                    library: self,
                });
            }
            Err(e) => e,
        };
        context.deactivate();
        let _ = parts.workers.drain(Instant::now() + Duration::from_secs(1));
        Err(StartFailure {
            error: failure,
            library: self,
        })
    }
}

/// What an instance is made of, but for the pointer `start` returns.
struct Parts {
    platform: String,
    shadow_path: std::path::PathBuf,
    generation: u64,
    plugin_version: String,
    workers: Workers,
    library: Arc<super::library::LoadedLibrary>,
    context: Arc<CallbackContext>,
    call_timeout: Duration,
}

impl Parts {
    fn into_instance(self, ptr: SendPtr) -> Instance {
        Instance {
            platform: self.platform,
            shadow_path: self.shadow_path,
            generation: self.generation,
            plugin_version: self.plugin_version,
            ptr,
            workers: self.workers,
            level: self.library.level(),
            library: Mutex::new(Some(self.library)),
            context: self.context,
            call_timeout: self.call_timeout,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// A `start` that outran its timeout, and what it will have started.
struct LateStart {
    answer: oneshot::Receiver<Result<SendPtr, String>>,
    parts: Parts,
}

impl LateStart {
    /// Waits on a thread of its own for `start` to return; then stops what it started, joins
    /// its workers and lets go of the library, which the last holder unloads (a `start` that
    /// never returns keeps it mapped, which is all that can be done for code still running).
    fn reap(self) {
        let (platform, generation) = (self.parts.platform.clone(), self.parts.generation);
        let name = format!("hermes-{platform}-g{generation}-late");
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let LateStart { answer, parts } = self;
            let timeout = parts.call_timeout;
            let library = match answer.recv() {
                Ok(Ok(ptr)) => match parts.into_instance(ptr).stop(false, timeout) {
                    Ok(stopped) => Some(stopped.library),
                    Err(e) => {
                        tracing::warn!(%platform, generation, error = %e, "a start that returned after its timeout could not be stopped; its library stays mapped");
                        None
                    }
                },
                // It failed late (or its worker died): nothing to stop.
                Ok(Err(_)) | Err(_) => {
                    let _ = parts.workers.drain(Instant::now() + timeout);
                    Some(Library {
                        inner: parts.library,
                    })
                }
            };
            if let Some(library) = library {
                let report = library.unload();
                tracing::info!(%platform, generation, closed = report.closed, "a start that returned after its timeout was stopped and its library let go");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that waits for a late start; its library stays mapped");
        }
    }
}
