//! `hermes-host serve`: start-up, listeners, warm-up, idle unload and an orderly shutdown.
//!
//! Start-up: read the config, register every plugin from its manifest, bind the public
//! listener and the control socket (before any platform starts, so a second server fails
//! before it touches a peer), start `eager` platforms (a platform configured only by its
//! manifest's `enable_when` counts as `eager`), print `hermes-host ready: http://<addr>` on
//! stdout, then start `background` platforms on a pool (the warm-up). `on_demand` and
//! unconfigured platforms load at first use. SIGTERM or Ctrl-C at any point of start-up ends
//! it and goes to the shutdown, which stops whatever had started.
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting, end SSE streams, let requests and routed sends
//! in flight finish (bounded), stop every platform in reverse start order, flush the journal,
//! remove the control socket, exit 0.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;

use crate::{
    api,
    config::{Config, StartMode},
    control,
    gateway::{Gateway, PlatformStart, Warmup},
    registry::EntryState,
};

/// How long shutdown waits for requests in flight, and for each platform to stop.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for the journal's last write.
pub(crate) const JOURNAL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The public API's listener: the socket the service manager passed (socket activation,
/// `LISTEN_FDS`; `server.listen` is then not bound), else `listen`, bound here.
async fn public_listener(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let mut passed = listenfd::ListenFd::from_env();
    let activated = passed
        .take_tcp_listener(0)
        .context("the socket passed by the service manager (LISTEN_FDS)")?;
    if let Some(listener) = activated {
        listener.set_nonblocking(true)?;
        tracing::info!(addr = ?listener.local_addr().ok(), "serving on the socket passed by the service manager");
        return Ok(tokio::net::TcpListener::from_std(listener)?);
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub(crate) async fn run(config: Config, config_ms: f64, dev: bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Install the handlers first: a SIGTERM that arrives once we said "ready" must be ours.
    let signals = Signals::install()?;
    let listen = config.server.listen;
    let file = config
        .source
        .as_deref()
        .map_or("(defaults)".into(), |p| p.display().to_string());
    if !listen.ip().is_loopback() && config.server.api_token.is_none() {
        bail!(
            "{file}: key `server.api_token`: required when `server.listen` ({listen}) is not a loopback address"
        );
    }
    if dev {
        tracing::info!("development mode: hot reload allowed");
    }
    let (gateway, journal_thread) = Gateway::new(config, dev)?;
    let quarantine = crate::quarantine::Quarantine::new(&gateway.config.plugins.state_dir);
    quarantine.watch_for_fatal_signals();
    let discover_ms = ms(t0.elapsed());
    tracing::info!(
        installed = gateway.registry.entries().count(),
        "plugins registered"
    );

    // Both listeners are bound before any platform starts: a second server on the same port
    // or socket must fail before it connects an adapter under the first one's identity.
    let started_listen = Instant::now();
    let tcp = public_listener(listen).await?;
    let local = tcp.local_addr()?;
    if !local.ip().is_loopback() && gateway.config.server.api_token.is_none() {
        bail!(
            "{file}: key `server.api_token`: required when the public API listens on {local}, not a loopback address"
        );
    }
    let socket_path = gateway.config.server.control_socket.clone();
    let unix = control::bind(&socket_path)?;
    let listen_ms = ms(started_listen.elapsed());
    let nofile = crate::http::raise_open_file_limit();
    let limits = crate::http::Limits {
        max_connections: gateway
            .config
            .server
            .max_connections
            .unwrap_or_else(|| crate::http::default_max_connections(nofile)),
        header_read_timeout: gateway.config.server.header_read_timeout,
        body_read_timeout: gateway.config.server.body_read_timeout,
    };
    tracing::debug!(
        nofile,
        max_connections = limits.max_connections,
        "connection limit"
    );
    let public = tokio::spawn(crate::http::serve(
        tcp,
        api::app(Arc::clone(&gateway)).layer(axum::middleware::from_fn_with_state(
            Arc::new(api::guard::Guard::new(local, &gateway.config.server)),
            api::guard::check,
        )),
        limits,
        gateway.shutdown.subscribe(),
    ));
    let control = tokio::spawn(crate::http::serve(
        unix,
        control::app(Arc::clone(&gateway)),
        crate::http::Limits {
            max_connections: crate::http::CONTROL_MAX_CONNECTIONS,
            ..limits
        },
        gateway.shutdown.subscribe(),
    ));

    // A signal during start-up ends it at once; the shutdown below stops whatever started.
    let start_up = async {
        let started_eager = Instant::now();
        let eager = platforms_in_mode(&gateway, StartMode::Eager);
        let results = start_platforms(&gateway, eager, StartMode::Eager).await;
        gateway
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .platforms
            .extend(results);
        let eager_ms = ms(started_eager.elapsed());
        // Watches persisted by an earlier run are back before we report ready.
        let restore = Arc::clone(&gateway);
        let _ = tokio::task::spawn_blocking(move || restore.hotreload.restore()).await;
        eager_ms
    };
    let mut signals = signals;
    let started = tokio::select! {
        eager_ms = start_up => Some(eager_ms),
        _ = signals.wait() => None,
    };
    if let Some(eager_ms) = started {
        {
            let mut profile = gateway.profile.lock().unwrap_or_else(|e| e.into_inner());
            profile.phases = vec![
                ("config".into(), config_ms),
                ("discover".into(), discover_ms),
                ("listen".into(), listen_ms),
                ("eager_start".into(), eager_ms),
            ];
            profile.ready_ms = Some(config_ms + ms(t0.elapsed()));
        }
        tracing::info!(http = %local, control = %socket_path.display(), "ready");
        println!(
            "hermes-host ready: http://{local} (control socket {})",
            socket_path.display()
        );
        crate::service::ready(&gateway);
        tokio::spawn(crate::service::watchdog(Arc::clone(&gateway)));
        let background = platforms_in_mode(&gateway, StartMode::Background);
        tokio::spawn(warm_up(Arc::clone(&gateway), background));
        tokio::spawn(idle_unloader(Arc::clone(&gateway)));
        tokio::spawn(crate::supervise::supervise(Arc::clone(&gateway)));
        // Queued sends left by an earlier run (or one killed with -9) go on.
        let resume = Arc::clone(&gateway);
        tokio::spawn(async move { crate::delivery::Outbox::resume(&resume).await });
        // SIGHUP re-reads hermes.toml (applied or refused as a whole); SIGTERM and Ctrl-C stop.
        loop {
            tokio::select! {
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
                _ = signals.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // On a task of its own: a reload that takes long (a slow start of a new
                    // platform) never keeps SIGTERM from being heard.
                    let gateway = Arc::clone(&gateway);
                    tokio::spawn(async move { gateway.reload_config().await });
                }
                _ = signals.usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening the journal");
                    gateway.journal.reopen();
                }
            }
        }
    } else {
        tracing::info!("signal during start-up");
    }
    tracing::info!("shutting down");
    crate::service::stopping();
    let _ = gateway.shutdown.send_replace(true);
    for server in [public, control] {
        match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
            Err(_) => tracing::warn!("requests still open after {DRAIN_TIMEOUT:?}; going on"),
        }
    }
    if !gateway.drained(DRAIN_TIMEOUT).await {
        tracing::warn!("routed sends still in flight after {DRAIN_TIMEOUT:?}; going on");
    }
    let watches = Arc::clone(&gateway);
    tokio::task::spawn_blocking(move || watches.hotreload.stop_all()).await?;
    let registry = Arc::clone(&gateway.registry);
    let order = gateway.start_order();
    tokio::task::spawn_blocking(move || {
        for id in order.iter().rev() {
            match registry.unload(id) {
                Ok(Some(report)) if !report.clean() => {
                    tracing::warn!(platform = %id, ?report, "library still resident after unload");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(platform = %id, error = %e, "stop failed; going on"),
            }
        }
        registry.shutdown();
    })
    .await?;
    // Inbound messages delivered while platforms stopped are queued before this: the writer
    // writes them and ends. A stuck journal (a FIFO nobody reads) does not keep us from exiting.
    gateway.journal.close();
    let journal_done = tokio::task::spawn_blocking(move || journal_thread.join());
    if tokio::time::timeout(JOURNAL_CLOSE_TIMEOUT, journal_done)
        .await
        .is_err()
    {
        tracing::error!(
            journal = %gateway.journal.path().display(),
            "the journal did not finish writing within {JOURNAL_CLOSE_TIMEOUT:?}; exiting without it"
        );
    }
    let _ = std::fs::remove_file(&socket_path);
    quarantine.clean_exit();
    tracing::info!("stopped");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Configured platforms that start in `mode`.
fn platforms_in_mode(gateway: &Gateway, mode: StartMode) -> Vec<String> {
    gateway
        .registry
        .entries()
        .filter(|e| e.configured())
        .filter(|e| e.platform_config().map_or(StartMode::Eager, |p| p.start) == mode)
        .map(|e| e.manifest().id.clone())
        .collect()
}

/// Loads and starts `ids` on the blocking pool, at most one per core at a time.
async fn start_platforms(
    gateway: &Arc<Gateway>,
    ids: Vec<String>,
    mode: StartMode,
) -> Vec<PlatformStart> {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let mut set = JoinSet::new();
    for id in ids {
        let gateway = Arc::clone(gateway);
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = Instant::now();
            let result = gateway.instance(&id).await;
            let ms = ms(started.elapsed());
            let error = result.err().map(|e| e.to_string());
            if let Some(e) = &error {
                tracing::error!(platform = %id, error = %e, "platform failed to start; the gateway goes on");
            }
            let load_ms = gateway.registry.entry(&id).ok().and_then(|e| e.status().last_open_ms);
            PlatformStart { id, mode, ms, load_ms, error }
        });
    }
    let mut out = Vec::new();
    while let Some(result) = set.join_next().await {
        if let Ok(start) = result {
            out.push(start);
        }
    }
    out
}

/// Starts the `background` platforms `ids` (at start-up, and those a config reload adds), then
/// settles the warm-up state from every background platform's: `pending` while any is still to
/// start (another warm-up runs), else `failed` if any failed, else `completed`.
pub(crate) async fn warm_up(gateway: Arc<Gateway>, ids: Vec<String>) {
    let started = Instant::now();
    let results = start_platforms(&gateway, ids, StartMode::Background).await;
    let failures = results.iter().filter(|r| r.error.is_some()).count();
    tracing::info!(
        started = results.len() - failures,
        failed = failures,
        ms = ms(started.elapsed()),
        "warm-up completed"
    );
    {
        let mut profile = gateway.profile.lock().unwrap_or_else(|e| e.into_inner());
        profile.platforms.extend(results);
        profile.warmup_ms = Some(ms(started.elapsed()));
    }
    let states: Vec<EntryState> = gateway
        .registry
        .entries()
        .filter(|e| {
            e.platform_config()
                .is_some_and(|p| p.start == StartMode::Background)
        })
        .map(|e| e.status().state)
        .collect();
    let settled = if states.iter().any(|s| {
        matches!(
            s,
            EntryState::Registered | EntryState::Loading | EntryState::Starting
        )
    }) {
        Warmup::Pending
    } else if states
        .iter()
        .any(|s| matches!(s, EntryState::Failed | EntryState::Invalid))
    {
        Warmup::Failed
    } else {
        Warmup::Completed
    };
    let _ = gateway.warmup.send_replace(settled);
}

/// How many times `idle_unload_secs` a platform may come to wait at most (hysteresis).
const IDLE_STRETCH_MAX: u32 = 8;

/// Unloads platforms with `idle_unload_secs` once they had no traffic for that long (each
/// platform's current table: a config reload may change it).
///
/// With hysteresis: a platform needed again within its idle period after an idle unload waits
/// twice as long before the next one (up to [`IDLE_STRETCH_MAX`] times `idle_unload_secs`),
/// so traffic that comes just slower than the idle period does not load and unload it on every
/// other message; one that stays unloaded longer than that is back to `idle_unload_secs`.
async fn idle_unloader(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = gateway.shutdown.subscribe();
    // Per platform: the stretch of its idle period, and when it was last unloaded for idleness
    // (until it is seen running again).
    let mut stretch: HashMap<String, (u32, Option<Instant>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = down.wait_for(|d| *d) => return,
        }
        let watched: Vec<(String, Duration)> = gateway
            .registry
            .entries()
            .filter_map(|e| Some((e.manifest().id.clone(), e.platform_config()?.idle_unload?)))
            .collect();
        for (id, idle) in &watched {
            let (factor, unloaded_at) = stretch.entry(id.clone()).or_insert((1, None));
            let Some(instance) = gateway.registry.running(id) else {
                continue;
            };
            if let Some(at) = unloaded_at.take() {
                // Loaded again since the idle unload: soon (stretch the period) or not (reset).
                *factor = if at.elapsed() < *idle * *factor {
                    (*factor * 2).min(IDLE_STRETCH_MAX)
                } else {
                    1
                };
            }
            let period = *idle * *factor;
            let quiet = gateway
                .since_activity(Some(id))
                .is_some_and(|since| since >= period);
            if quiet && instance.in_flight() == 0 {
                drop(instance);
                let registry = Arc::clone(&gateway.registry);
                let platform = id.clone();
                let unloaded =
                    tokio::task::spawn_blocking(move || registry.unload(&platform)).await;
                match unloaded {
                    Ok(Ok(Some(report))) => {
                        *unloaded_at = Some(Instant::now());
                        tracing::info!(
                            platform = %id,
                            idle_secs = period.as_secs_f64(),
                            unmapped = ?report.unmapped,
                            "unloaded after it was idle"
                        );
                    }
                    // Someone else stopped it first.
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::warn!(platform = %id, error = %e, "idle unload failed"),
                    Err(e) => tracing::warn!(platform = %id, error = %e, "idle unload task failed"),
                }
            }
        }
    }
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP, registered at start-up.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// Installed at start, so a SIGHUP never kills the server (the default action).
    hup: tokio::signal::unix::Signal,
    /// SIGUSR1: reopen the journal (log rotation).
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            usr1: signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
