//! The gateway: the registry plus everything `serve` does with messages.
//!
//! - [`dispatch`]: inbound messages arrive on plugin threads through [`GatewaySink`], which
//!   hands each to the SSE subscribers (bounded queues, see [`crate::events`]), the journal (a
//!   queue) and the routes that [`crate::routing`] plans (spawned tasks): all of it queues and
//!   returns at once, and no task has to be woken per message.
//! - [`send`]: sends from HTTP clients, the control socket or routes go through
//!   [`Gateway::send`], which loads the platform on first use and never blocks the runtime.
//!   Its errors ([`SendError`]) keep their causes; the HTTP layer picks the status.
//! - Here: the gateway itself, its activity clock (for idle unload) and the requests in flight.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::{
    config::{Config, StartMode},
    journal::{Journal, JournalOptions},
    metrics::Metrics,
    registry::{Registry, RegistryOptions},
    routing::Routes,
};

pub mod dispatch;
pub mod lanes;
pub mod reconfigure;
pub mod send;

pub use dispatch::GatewaySink;
pub use send::{SendError, SendOk};

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
    pub hotreload: crate::hotreload::HotReload,
    /// The routes in force: `config.routes` at start, swapped by a config reload.
    pub routes: Routes,
    /// Routed sends, in order per target chat.
    pub lanes: lanes::Lanes,
    /// The embedded store (`<state_dir>/hermes.db`): the message map and idempotency keys.
    /// Used from the blocking pool, never on a runtime thread.
    pub store: Arc<crate::store::Store>,
    /// This run of the gateway (pid and start time): who holds a pending idempotency key.
    pub run_id: String,
    /// Queued sends: the writer of accepted records, the lanes delivering them, the rate
    /// budgets ([`crate::delivery`]).
    pub outbox: crate::delivery::Outbox,
    started: Instant,
    activity: Mutex<Activity>,
    /// HTTP requests and route sends in progress.
    in_flight: AtomicUsize,
    idle_again: Notify,
    /// Woken when an isolated platform's child dies: the supervisor restarts it.
    pub crashes: Notify,
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
        let registry = Arc::new(Registry::discover(&config.plugins.search_dirs(), options));
        for problem in registry.problems() {
            tracing::warn!("{problem}");
        }
        let file = config
            .source
            .as_deref()
            .map_or("hermes.toml".into(), |p| p.display().to_string());
        warn_about_senders(&registry);
        for (id, table) in &config.platforms {
            if let Some(unknown) = registry.unknown_table(id) {
                anyhow::bail!("{file}: {unknown}");
            }
            if let Some(refusal) = registry.idle_unload_refusal(id, table) {
                anyhow::bail!("{file}: {refusal}");
            }
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
            queue_bytes: config.journal.queue_bytes,
        })
        .map_err(|e| anyhow::anyhow!("journal {}: {e}", config.journal.path.display()))?;
        let hotreload = crate::hotreload::HotReload::new(
            Arc::clone(&registry),
            config.hotreload.allowed,
            dev,
            config.hotreload.debounce,
            &config.plugins.state_dir,
            config
                .source
                .as_deref()
                .map_or("hermes.toml".into(), |p| p.display().to_string()),
        );
        let routes = Routes::new(config.routes.clone());
        let store = Arc::new(crate::store::Store::open(&config.plugins.state_dir)?);
        store.prune_idempotency(config.delivery.idempotency_ttl)?;
        store.prune_sent(config.delivery.idempotency_ttl)?;
        store.prune_seen(crate::store::MESSAGE_MAP_RETENTION)?;
        let run_id = format!("{}-{}", std::process::id(), hermes_plugin_api::now_ms());
        let outbox = crate::delivery::Outbox::start(
            Arc::clone(&store),
            run_id.clone(),
            config.delivery.idempotency_ttl,
            config.journal.durability == crate::journal::Durability::Fsync,
        );
        let gateway = Arc::new(Gateway {
            routes,
            lanes: lanes::Lanes::default(),
            store,
            outbox,
            run_id,
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
            crashes: Notify::new(),
            start_order: Mutex::new(Vec::new()),
        });
        let _ = slot.set(Arc::downgrade(&gateway));
        Ok((gateway, journal_thread))
    }

    /// Runs `f` on the store, on the blocking pool (no disk I/O on a runtime thread).
    pub async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
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

    /// Work in progress: the larger of the requests and route sends in progress
    /// ([`Gateway::requests_in_flight`]) and the calls queued or running in plugins
    /// ([`Gateway::plugin_calls_in_flight`]). A request waits on one call at most, so one send
    /// counts once, not twice; the count is 0 exactly when both are.
    pub fn in_flight(&self) -> usize {
        self.requests_in_flight().max(self.plugin_calls_in_flight())
    }

    /// HTTP requests, control requests and route sends in progress.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Calls queued or running in the serving instances (sends, health checks...).
    pub fn plugin_calls_in_flight(&self) -> usize {
        self.registry
            .entries()
            .filter_map(|e| e.running())
            .map(|i| i.in_flight())
            .sum()
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

/// Logs a warning for every configured platform open to everyone, and for every one with
/// inbound connections that admits no sender yet (see [`crate::config::Senders`]).
pub(crate) fn warn_about_senders(registry: &Registry) {
    for entry in registry.entries().filter(|e| e.configured()) {
        let manifest = entry.manifest();
        if let Some(warning) = entry.senders().warning(&manifest.id, manifest.inbound) {
            tracing::warn!("{warning}");
        }
    }
}
