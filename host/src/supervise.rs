//! The supervisor: replaces hung instances and restarts isolated platforms whose child died.
//!
//! Both go through the reload transaction, so calls arriving meanwhile wait at the door and are
//! served by the new generation.
//! - Hung (every worker stuck past the call timeout, `on_hang = "restart"`, the default): a
//!   fresh generation without its state; a platform that hangs again within a minute waits
//!   twice as long as the last time (1 s, 2 s, 4 s, ... up to a minute).
//! - Crashed (`isolation = "process"`; the child died by a signal, an exit, out of memory, or
//!   was killed for a call that did not return): a new child, started with the state the dead
//!   generation started with (what it changed since is lost). The first restart is immediate:
//!   one crash is not a loop. Each further crash within a minute of the last restart waits
//!   longer: 100 ms, doubling up to 30 s; a minute without a crash starts over.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::gateway::Gateway;

/// How often the supervisor looks for hung instances (crashes wake it at once).
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// The longest wait between two restarts of a platform that keeps hanging.
const MAX_HUNG_BACKOFF: Duration = Duration::from_secs(60);

/// The wait before the second restart of a platform that keeps crashing.
pub(crate) const FIRST_CRASH_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two restarts of a platform that keeps crashing.
pub(crate) const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(30);
/// A platform that ran this long since its last restart without crashing starts over.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The wait before restarting a platform that crashed at `now`, given its last restart and
/// the wait that restart had; returns the wait now.
pub(crate) fn crash_backoff(last: Option<(Instant, Duration)>, now: Instant) -> Duration {
    match last {
        Some((at, waited)) if now.duration_since(at) < HEALTHY_AFTER => match waited {
            Duration::ZERO => FIRST_CRASH_BACKOFF,
            waited => (waited * 2).min(MAX_CRASH_BACKOFF),
        },
        _ => Duration::ZERO,
    }
}

/// Runs until shutdown.
pub(crate) async fn supervise(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = gateway.shutdown.subscribe();
    // Per platform: the last restart and the wait before it.
    let mut hung_restarts: HashMap<String, (Instant, Duration)> = HashMap::new();
    let mut crash_restarts: HashMap<String, (Instant, Duration)> = HashMap::new();
    let restarting: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gateway.crashes.notified() => {}
            _ = down.wait_for(|d| *d) => return,
        }
        let crashed: Vec<(String, u64)> = gateway
            .registry
            .entries()
            .filter_map(|e| {
                let crashed = e.running().filter(|i| i.crashed().is_some())?;
                Some((e.manifest().id.clone(), crashed.generation()))
            })
            .collect();
        for (id, generation) in crashed {
            if !restarting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone())
            {
                continue;
            }
            let now = Instant::now();
            let wait = crash_backoff(crash_restarts.get(&id).copied(), now);
            crash_restarts.insert(id.clone(), (now + wait, wait));
            let (gateway, restarting) = (Arc::clone(&gateway), Arc::clone(&restarting));
            tokio::spawn(async move { restart(&gateway, id, generation, wait, restarting).await });
        }
        replace_hung(&gateway, &mut hung_restarts).await;
    }
}

/// Restarts a crashed platform after `wait`, unless its crashed `generation` was replaced
/// meanwhile (an operator's `plugin reload`, a config reload): a healthy successor is never
/// restarted for its predecessor's crash.
async fn restart(
    gateway: &Arc<Gateway>,
    id: String,
    generation: u64,
    wait: Duration,
    restarting: Arc<Mutex<HashSet<String>>>,
) {
    if !wait.is_zero() {
        tracing::warn!(platform = %id, wait_ms = wait.as_millis() as u64, "the platform crashed again within a minute; restarting it after a wait");
        tokio::time::sleep(wait).await;
    }
    let still_crashed = gateway
        .registry
        .running(&id)
        .is_some_and(|i| i.generation() == generation && i.crashed().is_some());
    if !still_crashed {
        tracing::info!(platform = %id, generation, "the crashed generation was replaced before its restart; nothing to do");
    } else {
        match reload(gateway, &id, "crash").await {
            Ok(generation) => {
                tracing::warn!(platform = %id, generation, "crashed platform restarted in a new child");
            }
            Err(reason) => {
                tracing::error!(platform = %id, %reason, "restarting the crashed platform failed; trying again with backoff");
            }
        }
    }
    restarting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    // A failed restart leaves the platform crashed: look again.
    gateway.crashes.notify_one();
}

/// Replaces hung instances of platforms with `on_hang = "restart"`, with backoff.
async fn replace_hung(gateway: &Arc<Gateway>, restarts: &mut HashMap<String, (Instant, Duration)>) {
    let hung: Vec<String> = gateway
        .registry
        .entries()
        .filter(|e| {
            e.platform_config()
                .is_none_or(|p| p.on_hang == crate::config::OnHang::Restart)
        })
        .filter(|e| e.running().is_some_and(|i| i.is_hung()))
        .map(|e| e.manifest().id.clone())
        .collect();
    for id in hung {
        let now = Instant::now();
        let wait = match restarts.get(&id) {
            Some((last, wait)) if now.duration_since(*last) < MAX_HUNG_BACKOFF => {
                if now.duration_since(*last) < *wait {
                    continue;
                }
                (*wait * 2).min(MAX_HUNG_BACKOFF)
            }
            _ => Duration::from_secs(1),
        };
        restarts.insert(id.clone(), (now, wait));
        tracing::warn!(platform = %id, "instance hung: replacing it with a fresh generation (its state is lost)");
        match reload(gateway, &id, "supervisor").await {
            Ok(generation) => tracing::warn!(platform = %id, generation, "hung instance replaced"),
            Err(reason) => {
                tracing::error!(platform = %id, %reason, "replacing the hung instance failed; retrying after {wait:?}");
            }
        }
    }
}

/// Reloads `id` on a blocking thread: the new generation, or why not.
async fn reload(gateway: &Arc<Gateway>, id: &str, trigger: &'static str) -> Result<u64, String> {
    let registry = Arc::clone(&gateway.registry);
    let platform = id.to_owned();
    match tokio::task::spawn_blocking(move || registry.reload(&platform, trigger)).await {
        Ok(Ok(outcome)) => Ok(outcome.new_generation),
        Ok(Err(refused)) => Err(refused.reason),
        Err(e) => Err(format!("the supervisor's task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_starts_at_once_then_doubles_and_resets_after_a_healthy_minute() {
        let t0 = Instant::now();
        assert_eq!(crash_backoff(None, t0), Duration::ZERO);
        let mut last = (t0, Duration::ZERO);
        let mut waits = Vec::new();
        for i in 1..=12 {
            let now = t0 + Duration::from_millis(10 * i);
            let wait = crash_backoff(Some(last), now);
            waits.push(wait.as_millis());
            last = (now + wait, wait);
        }
        assert_eq!(
            waits,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        let later = last.0 + HEALTHY_AFTER;
        assert_eq!(crash_backoff(Some(last), later), Duration::ZERO);
    }
}
