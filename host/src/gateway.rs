//! The gateway: the registry plus everything `serve` does with messages.
//!
//! Inbound messages arrive on plugin threads through [`GatewaySink`], which hands each to the
//! SSE subscribers (bounded queues, see [`crate::events`]), the journal (a queue) and the routes (spawned tasks) right
//! there: all of it queues and returns at once, and no task has to be woken per message. Sends (from HTTP clients, the control socket or routes) go through
//! [`Gateway::send`], which loads the platform on first use and never blocks the runtime.
//!
//! Which inbound messages go on to which platforms is [`crate::routing`]'s to say; the gateway
//! sends each routed copy in its own task.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::{
    config::{Config, StartMode},
    journal::{Durability, Journal, JournalError, JournalOptions, Record, RecordKind},
    loader::{CallError, EventSink},
    message::{Inbound, Outbound},
    metrics::Metrics,
    registry::{Instance, Registry, RegistryError, RegistryOptions},
    routing::{RoutedSend, Routes},
};

/// Takes inbound messages on plugin threads and dispatches them without blocking.
pub struct GatewaySink {
    gateway: Arc<OnceLock<Weak<Gateway>>>,
    runtime: tokio::runtime::Handle,
}

impl EventSink for GatewaySink {
    fn inbound(&self, message: Inbound) -> Result<(), String> {
        match self.gateway.get().and_then(Weak::upgrade) {
            Some(gateway) => dispatch(&gateway, message, &self.runtime),
            None => Err("the gateway is shutting down".into()),
        }
    }

    fn stale_delivery(&self, platform: &str, generation: u64) {
        if let Some(gateway) = self.gateway.get().and_then(Weak::upgrade) {
            gateway.metrics.stale_delivery(platform);
        }
        tracing::debug!(
            platform,
            generation,
            "refused a delivery from a generation that no longer serves"
        );
    }
}

/// Why a send failed. Each variant keeps its cause; [`crate::api`] alone turns one into an
/// HTTP status and the words a client sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The platform is not installed, failed to load or did not stop.
    #[error(transparent)]
    Platform(#[from] RegistryError),
    /// A reload held new calls at the door for longer than the platform's call timeout.
    #[error("platform `{platform}` was held by a reload for longer than {} ms", timeout.as_millis())]
    HeldByReload {
        /// The platform.
        platform: String,
        /// How long the send waited.
        timeout: Duration,
    },
    /// The task that loads the platform failed (it panicked).
    #[error("platform `{platform}`: the load task failed: {message}")]
    LoadTask {
        /// The platform.
        platform: String,
        /// The task's error.
        message: String,
    },
    /// The journal could not take the record: nothing was sent.
    #[error("platform `{platform}`: not sent: {source}")]
    NotAdmitted {
        /// The platform.
        platform: String,
        /// The journal's state.
        #[source]
        source: JournalError,
    },
    /// The call into the plugin failed.
    #[error("{platform}: {source}")]
    Call {
        /// The platform.
        platform: String,
        /// How it failed.
        #[source]
        source: CallError,
    },
    /// Sent, but with `fsync` durability the journal could not record it: the answer must not
    /// claim it is kept, and a retry would send it twice.
    #[error("{platform}: sent as {message_id}, but the journal could not record it: {source}")]
    NotJournaled {
        /// The platform.
        platform: String,
        /// The platform's id of the sent message.
        message_id: String,
        /// The journal's error.
        #[source]
        source: JournalError,
    },
}

impl SendError {
    /// Whether the same send may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Platform(_) | SendError::NotJournaled { .. } => false,
            SendError::HeldByReload { .. }
            | SendError::LoadTask { .. }
            | SendError::NotAdmitted { .. } => true,
            SendError::Call { source, .. } => match source {
                CallError::Plugin { retryable, .. } => *retryable,
                CallError::Timeout { .. }
                | CallError::Unhealthy
                | CallError::Stopped
                | CallError::Expired { .. }
                | CallError::QueueFull { .. } => true,
            },
        }
    }

    /// The metrics label of a failed call.
    fn label(&self) -> &'static str {
        match self {
            SendError::Call { source, .. } => match source {
                CallError::Timeout { .. } => "timeout",
                CallError::Plugin { .. } => "error",
                CallError::Expired { .. } | CallError::QueueFull { .. } => "busy",
                _ => "unavailable",
            },
            _ => "unavailable",
        }
    }
}

/// A successful send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SendOk {
    /// The platform's id for the message.
    pub message_id: String,
    /// The platform.
    pub platform: String,
    /// The generation that sent it.
    pub generation: u64,
}

/// Warm-up of `background` platforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Warmup {
    /// Still starting.
    Pending,
    /// Every background platform started.
    Completed,
    /// At least one failed (the others run).
    Failed,
}

impl Warmup {
    /// The lowercase name used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Warmup::Pending => "pending",
            Warmup::Completed => "completed",
            Warmup::Failed => "failed",
        }
    }
}

/// Timings of start-up, for `GET /api/startup_profile`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StartupProfile {
    /// Named phases in order, with their duration in ms.
    pub phases: Vec<(String, f64)>,
    /// From process start of `serve` to ready (listeners up, eager platforms started).
    pub ready_ms: Option<f64>,
    /// From ready to the end of the warm-up.
    pub warmup_ms: Option<f64>,
    /// Each started platform: id, mode, ms, error.
    pub platforms: Vec<PlatformStart>,
}

/// One platform's start during start-up.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformStart {
    /// The platform.
    pub id: String,
    /// `eager` or `background`.
    pub mode: StartMode,
    /// Load + start time, as the start-up saw it.
    pub ms: f64,
    /// Of that, the library load (shadow copy, dlopen, checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The running gateway.
pub struct Gateway {
    /// The configuration it runs with.
    pub config: Config,
    /// Every installed plugin.
    pub registry: Arc<Registry>,
    /// Inbound messages for SSE subscribers.
    pub events: Arc<crate::events::Events>,
    /// The journal.
    pub journal: Journal,
    /// Counters.
    pub metrics: Metrics,
    /// Start-up timings.
    pub profile: Mutex<StartupProfile>,
    /// Warm-up state.
    pub warmup: watch::Sender<Warmup>,
    /// Set once shutdown begins.
    pub shutdown: watch::Sender<bool>,
    /// Hot reload: the watched plugins.
    pub hotreload: crate::watch::HotReload,
    /// The routes in force: `config.routes` at start, swapped by a config reload.
    pub routes: Routes,
    started: Instant,
    activity: Mutex<Activity>,
    /// HTTP requests and route sends in progress.
    in_flight: AtomicUsize,
    idle_again: Notify,
    start_order: Mutex<Vec<String>>,
}

struct Activity {
    last: Instant,
    platforms: HashMap<String, Instant>,
}

impl Gateway {
    /// Builds the gateway and its registry (manifests only) and starts the journal writer.
    /// `dev` allows hot reload whatever the config says. Must run inside a tokio runtime.
    pub fn new(
        config: Config,
        dev: bool,
    ) -> anyhow::Result<(Arc<Gateway>, crate::journal::JournalThread)> {
        let slot = Arc::new(OnceLock::new());
        let sink = GatewaySink {
            gateway: Arc::clone(&slot),
            runtime: tokio::runtime::Handle::current(),
        };
        let options = RegistryOptions::from_config(&config, Arc::new(sink));
        let registry = Arc::new(Registry::discover(&config.plugins.dirs, options));
        for problem in registry.problems() {
            tracing::warn!("{problem}");
        }
        for route in &config.routes {
            for end in std::iter::once(&route.from).chain(&route.to) {
                if !registry.is_registered(&end.platform) {
                    tracing::warn!(platform = %end.platform, "a route names a platform that is not installed");
                }
            }
        }
        let (journal, journal_thread) = Journal::open(JournalOptions {
            path: config.journal.path.clone(),
            flush_every: config.journal.flush,
            durability: config.journal.durability,
            queue_bytes: crate::journal::DEFAULT_QUEUE_BYTES,
        })
        .map_err(|e| anyhow::anyhow!("journal {}: {e}", config.journal.path.display()))?;
        let hotreload = crate::watch::HotReload::new(
            Arc::clone(&registry),
            config.hotreload.allowed || dev,
            config.hotreload.debounce,
            &config.plugins.state_dir,
            config
                .source
                .as_deref()
                .map_or("hermes.toml".into(), |p| p.display().to_string()),
        );
        let routes = Routes::new(config.routes.clone());
        let gateway = Arc::new(Gateway {
            routes,
            config,
            hotreload,
            registry,
            events: Arc::default(),
            journal,
            metrics: Metrics::default(),
            profile: Mutex::new(StartupProfile::default()),
            warmup: watch::channel(Warmup::Pending).0,
            shutdown: watch::channel(false).0,
            started: Instant::now(),
            activity: Mutex::new(Activity {
                last: Instant::now(),
                platforms: HashMap::new(),
            }),
            in_flight: AtomicUsize::new(0),
            idle_again: Notify::new(),
            start_order: Mutex::new(Vec::new()),
        });
        let _ = slot.set(Arc::downgrade(&gateway));
        Ok((gateway, journal_thread))
    }

    /// When `serve` began.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn touch(&self, platform: &str) {
        let now = Instant::now();
        let mut activity = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        activity.last = now;
        match activity.platforms.get_mut(platform) {
            Some(at) => *at = now,
            None => {
                activity.platforms.insert(platform.to_owned(), now);
            }
        }
    }

    /// Time since the last message in or out, for the whole gateway or one platform.
    pub fn since_activity(&self, platform: Option<&str>) -> Option<Duration> {
        let activity = self.activity.lock().ok()?;
        let at = match platform {
            Some(p) => *activity.platforms.get(p).unwrap_or(&self.started),
            None => activity.last,
        };
        Some(at.elapsed())
    }

    /// Requests and route sends in progress, plus calls queued or running in plugins.
    pub fn in_flight(&self) -> usize {
        let plugin_calls: usize = self
            .registry
            .entries()
            .filter_map(|e| e.running())
            .map(|i| i.in_flight())
            .sum();
        self.in_flight.load(Ordering::Acquire) + plugin_calls
    }

    /// Counts one request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }

    /// Waits (up to `timeout`) until no request or route send is in flight.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle_again.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The running instance of `platform`, loading it on first use (off the runtime's threads).
    pub async fn instance(self: &Arc<Self>, platform: &str) -> Result<Arc<Instance>, SendError> {
        if let Some(instance) = self.registry.running(platform) {
            return Ok(instance);
        }
        let entry = self.registry.entry(platform)?;
        // Held at the door by a reload: wait for the swap without taking a thread.
        if entry.is_held() {
            let timeout = self.registry.call_timeout(entry);
            if tokio::time::timeout(timeout, entry.wait_released())
                .await
                .is_err()
            {
                return Err(SendError::HeldByReload {
                    platform: platform.to_owned(),
                    timeout,
                });
            }
            if let Some(instance) = self.registry.running(platform) {
                return Ok(instance);
            }
        }
        let registry = Arc::clone(&self.registry);
        let id = platform.to_owned();
        let result = tokio::task::spawn_blocking(move || registry.instance(&id))
            .await
            .map_err(|e| SendError::LoadTask {
                platform: platform.to_owned(),
                message: e.to_string(),
            })?;
        let instance = result?;
        self.note_started(platform);
        Ok(instance)
    }

    /// Remembers start order, so shutdown stops platforms in reverse.
    pub fn note_started(&self, platform: &str) {
        let mut order = self.start_order.lock().unwrap_or_else(|e| e.into_inner());
        order.retain(|p| p != platform);
        order.push(platform.to_owned());
    }

    /// Platforms in the order they (last) started.
    pub fn start_order(&self) -> Vec<String> {
        self.start_order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `message` through `platform`, recording it in the journal as `kind`.
    pub async fn send(
        self: &Arc<Self>,
        platform: &str,
        message: Outbound,
        kind: RecordKind,
        route_from: Option<String>,
    ) -> Result<SendOk, SendError> {
        // Nothing is sent that the journal could not record.
        self.journal
            .admit()
            .await
            .map_err(|source| SendError::NotAdmitted {
                platform: platform.to_owned(),
                source,
            })?;
        let started = Instant::now();
        let mut attempts = 0;
        let (instance, result) = loop {
            let instance = self.instance(platform).await?;
            let result = instance.send_async(&message).await;
            attempts += 1;
            // `Stopped` means the call never reached the plugin: the instance was swapped out
            // by a reload between our lookup and the call. Take the serving one and go again.
            if result == Err(CallError::Stopped) && attempts < 5 {
                continue;
            }
            break (instance, result);
        };
        // While the call ran it counted in flight, which keeps idle unload away; the activity
        // clock starts again from its end.
        self.touch(platform);
        match result {
            Ok(receipt) => {
                self.metrics.send(platform, "ok", started.elapsed());
                let kept = self.journal.record(Record {
                    ts: hermes_plugin_api::now_ms(),
                    kind,
                    platform: platform.to_owned(),
                    chat_id: message.chat_id,
                    user: None,
                    text: message.text,
                    message_id: receipt.message_id.clone(),
                    generation: instance.generation(),
                    route_from,
                });
                let kept = match kept {
                    Ok(ticket) => self.journal.committed(ticket).await,
                    Err(e) => Err(e),
                };
                if let Err(source) = kept {
                    // The message is out; only the record is missing. With `fsync` the answer
                    // must not claim it is kept, and a retry would send it twice.
                    tracing::error!(platform, message_id = %receipt.message_id, error = %source, "a sent message was not journaled");
                    if self.journal.durability() == Durability::Fsync {
                        return Err(SendError::NotJournaled {
                            platform: platform.to_owned(),
                            message_id: receipt.message_id,
                            source,
                        });
                    }
                }
                Ok(SendOk {
                    message_id: receipt.message_id,
                    platform: platform.to_owned(),
                    generation: instance.generation(),
                })
            }
            Err(source) => {
                let e = SendError::Call {
                    platform: platform.to_owned(),
                    source,
                };
                self.metrics.send(platform, e.label(), started.elapsed());
                Err(e)
            }
        }
    }
}

/// Keeps a request counted as in flight.
pub struct InFlightGuard(Arc<Gateway>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_again.notify_waiters();
        }
    }
}

/// Hands an inbound message to the journal, the routes and the SSE stream. Runs on the
/// plugin's thread: everything here queues or spawns and returns at once, except that with
/// `fsync` durability the record is on disk first, and a message the journal could not keep is
/// refused (the plugin sees the error) before anything else sees it.
fn dispatch(
    gateway: &Arc<Gateway>,
    message: Inbound,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    gateway.touch(&message.platform);
    gateway.metrics.inbound(&message.platform);
    let kept = gateway.journal.record(Record {
        ts: message.timestamp,
        kind: RecordKind::Inbound,
        platform: message.platform.clone(),
        chat_id: message.chat_id.clone(),
        user: Some(message.user.clone()),
        text: message.text.clone(),
        message_id: message.message_id.clone(),
        generation: message.generation,
        route_from: None,
    });
    if gateway.journal.durability() == Durability::Fsync {
        kept.and_then(|ticket| gateway.journal.committed_blocking(ticket))
            .map_err(|e| format!("not accepted: {e}"))?;
    }
    let sends = crate::routing::plan(&gateway.routes.current(), &message);
    // SSE first: a routed copy must never reach subscribers before its source message.
    gateway.events.publish(&message);
    for RoutedSend {
        platform,
        message,
        source,
    } in sends
    {
        let gateway2 = Arc::clone(gateway);
        let guard = gateway.begin();
        runtime.spawn(async move {
            let _guard = guard;
            let sent = gateway2
                .send(&platform, message, RecordKind::Routed, Some(source.clone()))
                .await;
            match sent {
                Ok(_) => gateway2.metrics.routed("ok"),
                Err(e) => {
                    gateway2.metrics.routed("error");
                    tracing::warn!(from = %source, to = %platform, error = %e, "routed send failed");
                }
            }
        });
    }
    Ok(())
}
