//! Running a plugin in process without the host, for its own unit tests (feature `testing`).
//!
//! ```
//! # use hermes_plugin_api::{Host, InboundMessage, OutboundMessage, Plugin, SendError, SendReceipt, State};
//! # #[derive(serde::Deserialize)] struct Config { prefix: String }
//! # struct Echo { prefix: String, host: Host }
//! # impl Plugin for Echo {
//! #     type Config = Config;
//! #     fn start(c: Config, host: Host, _: Option<State>) -> Result<Self, String> { Ok(Echo { prefix: c.prefix, host }) }
//! #     fn send(&self, m: OutboundMessage) -> Result<SendReceipt, SendError> {
//! #         let echo = InboundMessage::new(m.chat_id, "echo", format!("{}{}", self.prefix, m.text), "1");
//! #         self.host.deliver(&echo).map_err(SendError::retryable)?;
//! #         Ok(SendReceipt { message_id: "1".into() })
//! #     }
//! #     fn stop(self) -> Result<(), String> { Ok(()) }
//! # }
//! use hermes_plugin_api::testing::Harness;
//!
//! let echo = Harness::<Echo>::start(serde_json::json!({ "prefix": "> " })).unwrap();
//! echo.send_text("lobby", "hi").unwrap();
//! assert_eq!(echo.delivered()[0].text, "> hi");
//! echo.stop().unwrap();
//! ```
//!
//! What the harness does as the host does: the config goes through `serde_json` into
//! `Plugin::Config` and through `validate_config`; `start` gets a `Host` whose `deliver` and
//! `log` are recorded; `stop` exports the state first (as a reload does) and, once it returned,
//! the instance's deliveries are refused. What it does not: no worker threads, call timeouts,
//! ABI checks or `dlopen` (`hermes-host plugin check --start` does those). The plugin's
//! `tracing` events during a harness's call (start, send, health, export, stop) go to that
//! harness, whichever test thread runs it (cargo runs tests in parallel threads); events from
//! threads the plugin spawned go to the harness started last in the process. When the process
//! runs one test at a time (cargo-nextest, or `--test-threads=1`), `stop` also fails if a
//! thread started during the instance's life still runs a second after `stop` returned: a
//! plugin that leaks its threads would crash the gateway when the host unloads it.

use std::{
    ffi::c_void,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};
use serde::Serialize;

use super::Host;
use crate::{
    Health, InboundMessage, OutboundMessage, Plugin, SendError, SendReceipt, State,
    abi::{DELIVER_STALE, DeliverErrorFfi, HostContext, HostV1_1, InboundFfi, InboundV1_1, LEVEL},
    export::convert,
    log,
};

/// The largest attachment the harness's host accepts, as the gateway's default.
pub const MAX_ATTACHMENT_BYTES: u64 = 10 * 1024 * 1024;

/// A log record the plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// One of the `abi::LOG_*` levels.
    pub level: u8,
    /// The `tracing` target (the plugin's module path) or what `Host::log` was given.
    pub target: String,
    /// The text, fields included.
    pub message: String,
}

/// What the harness's host side records.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<InboundMessage>>,
    arrived: Condvar,
    logs: Mutex<Vec<LogRecord>>,
    /// Cleared when the instance's `stop` returned: later deliveries are refused, as the host
    /// refuses a stopped generation's.
    serving: AtomicBool,
}

/// One plugin instance, started in this process as the host would start it.
pub struct Harness<P: Plugin> {
    plugin: Option<P>,
    recorder: Arc<Recorder>,
    host: Host,
    generation: u64,
    /// The process's threads before `start`, when this process runs one test at a time.
    threads_before: Option<Vec<u32>>,
}

impl<P: Plugin> Harness<P> {
    /// Starts generation 1 with `config` (anything that serialises to the JSON object a
    /// `[platforms.<id>]` table becomes) and no previous state.
    pub fn start(config: impl Serialize) -> Result<Self, String> {
        Self::start_as(config, 1, None)
    }

    /// Starts as `generation`, handing `previous` to `start` as a reload would.
    pub fn start_as(
        config: impl Serialize,
        generation: u64,
        previous: Option<State>,
    ) -> Result<Self, String> {
        let json = serde_json::to_value(config).map_err(|e| format!("config: {e}"))?;
        let config: P::Config = serde_json::from_value(json).map_err(|e| format!("config: {e}"))?;
        P::validate_config(&config)?;
        let recorder = Arc::new(Recorder {
            serving: AtomicBool::new(true),
            ..Recorder::default()
        });
        // A host of this crate's level, without a data folder.
        let host = Host::new(
            HostContext {
                ctx: Arc::as_ptr(&recorder).cast(),
                generation,
                deliver,
                log: record_log,
            },
            Some(HostV1_1 {
                level: LEVEL,
                data_dir: RStr::from_str(""),
                max_attachment_bytes: MAX_ATTACHMENT_BYTES,
                deliver: deliver_v1_1,
            }),
        );
        log::install(host);
        let threads_before = one_test_at_a_time().then(thread_ids).flatten();
        let plugin = log::on_this_thread(host, || P::start(config, host, previous))?;
        Ok(Harness {
            plugin: Some(plugin),
            recorder,
            host,
            generation,
            threads_before,
        })
    }

    fn plugin(&self) -> &P {
        self.plugin
            .as_ref()
            .expect("the harness holds its plugin until stop")
    }

    /// The instance's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Calls `send`.
    pub fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        log::on_this_thread(self.host, || self.plugin().send(message))
    }

    /// Calls `send` with a plain text message to `chat_id`.
    pub fn send_text(&self, chat_id: &str, text: &str) -> Result<SendReceipt, SendError> {
        self.send(OutboundMessage::new(chat_id, text))
    }

    /// Calls `health`.
    pub fn health(&self) -> Health {
        log::on_this_thread(self.host, || self.plugin().health())
    }

    /// Calls `export_state`.
    pub fn export_state(&self) -> Option<State> {
        log::on_this_thread(self.host, || self.plugin().export_state())
    }

    /// Every message the instance delivered so far.
    pub fn delivered(&self) -> Vec<InboundMessage> {
        lock(&self.recorder.delivered).clone()
    }

    /// Waits until the instance delivered at least `n` messages (from its own threads, say),
    /// at most `timeout`; the messages delivered by then.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<InboundMessage> {
        let deadline = Instant::now() + timeout;
        let mut delivered = lock(&self.recorder.delivered);
        while delivered.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            delivered = self
                .recorder
                .arrived
                .wait_timeout(delivered, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        delivered.clone()
    }

    /// Every log record the instance wrote so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        lock(&self.recorder.logs).clone()
    }

    /// Exports the state and stops the instance, as a reload or an unload does; the state.
    pub fn stop(mut self) -> Result<Option<State>, String> {
        self.stop_inner()
    }

    /// A reload: exports the state, stops this instance and starts the next generation with
    /// `config` and that state.
    pub fn reload(mut self, config: impl Serialize) -> Result<Harness<P>, String> {
        let state = self.stop_inner()?;
        Self::start_as(config, self.generation + 1, state)
    }

    fn stop_inner(&mut self) -> Result<Option<State>, String> {
        let Some(plugin) = self.plugin.take() else {
            return Ok(None);
        };
        let (state, stopped) = log::on_this_thread(self.host, || {
            let state = plugin.export_state();
            (state, plugin.stop())
        });
        self.recorder.serving.store(false, Ordering::Release);
        // As the export glue does after `stop`: forwarded `tracing` events stop here, so none
        // can reach this harness's recorder once it is gone.
        log::uninstall();
        stopped?;
        if let Some(before) = self.threads_before.take() {
            let leaked = threads_left_since(&before);
            if !leaked.is_empty() {
                return Err(format!(
                    "`stop` returned with threads the plugin started still running: {}; join every thread `start` spawned (the host unloads the library after `stop`, and a thread still in its code would crash the gateway)",
                    leaked.join(", ")
                ));
            }
        }
        Ok(state)
    }
}

impl<P: Plugin> Drop for Harness<P> {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Whether this process runs one test at a time (cargo-nextest runs each test in a process of
/// its own; `--test-threads=1` runs them in turn): only then is every thread started during a
/// harness's life the plugin's, and `stop` checks that none outlives it.
fn one_test_at_a_time() -> bool {
    std::env::var_os("NEXTEST").is_some()
        || std::env::var("RUST_TEST_THREADS").is_ok_and(|n| n.trim() == "1")
}

/// The ids of this process's threads (Linux); `None` elsewhere.
fn thread_ids() -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// `name (tid)` of the threads started since `before` that are still running after a grace of
/// a second (a thread told to stop may take a moment to end after `stop` returned).
fn threads_left_since(before: &[u32]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let new: Vec<u32> = thread_ids()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        if new.is_empty() || Instant::now() >= deadline {
            return new
                .into_iter()
                .map(|tid| {
                    let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                        .unwrap_or_default();
                    format!("{} ({tid})", name.trim())
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// # Safety
/// `ctx` is the `Recorder` of a live harness (the host contract: valid while the instance runs).
unsafe extern "C" fn deliver(
    ctx: *const c_void,
    _generation: u64,
    message: &InboundFfi<'_>,
) -> RResult<(), RString> {
    // SAFETY: `ctx` points at the harness's `Recorder`, which the harness keeps alive (in an
    // `Arc`) for as long as the plugin it started can call it: until `stop` returned.
    let recorder = unsafe { &*ctx.cast::<Recorder>() };
    if !recorder.serving.load(Ordering::Acquire) {
        return RErr(RString::from("this instance no longer serves"));
    }
    lock(&recorder.delivered).push(convert::inbound_v1_0(message));
    recorder.arrived.notify_all();
    ROk(())
}

/// # Safety
/// As for [`deliver`].
unsafe extern "C" fn deliver_v1_1(
    ctx: *const c_void,
    _generation: u64,
    message: &InboundV1_1<'_>,
) -> RResult<(), DeliverErrorFfi> {
    // SAFETY: as in `deliver`.
    let recorder = unsafe { &*ctx.cast::<Recorder>() };
    if !recorder.serving.load(Ordering::Acquire) {
        return RErr(DeliverErrorFfi {
            code: DELIVER_STALE,
            reason: RString::from("this instance no longer serves"),
        });
    }
    lock(&recorder.delivered).push(convert::inbound_v1_1(message));
    recorder.arrived.notify_all();
    ROk(())
}

/// # Safety
/// As for [`deliver`].
unsafe extern "C" fn record_log(
    ctx: *const c_void,
    _generation: u64,
    level: u8,
    target: RStr<'_>,
    message: RStr<'_>,
) {
    // SAFETY: as in `deliver`.
    let recorder = unsafe { &*ctx.cast::<Recorder>() };
    lock(&recorder.logs).push(LogRecord {
        level,
        target: target.as_str().to_owned(),
        message: message.as_str().to_owned(),
    });
}

#[cfg(test)]
mod tests;
