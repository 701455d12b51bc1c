//! Running under systemd (`Type=notify`), through the `sd-notify` crate: nothing happens
//! without `$NOTIFY_SOCKET`. (Socket activation, the other half, is `serve`'s
//! `public_listener`.)
//!
//! - `READY=1` once both listeners are bound and the eager platforms have started, with a
//!   `STATUS=` line (platforms running, queued sends);
//! - `RELOADING=1` with `MONOTONIC_USEC` before a config reload (SIGHUP or `reload-config`),
//!   then `READY=1` and a new `STATUS=` after it, applied or refused;
//! - `STOPPING=1` when shutdown begins;
//! - `WATCHDOG=1` every half of `$WATCHDOG_USEC`, sent only while the runtime runs this task and
//!   the registry answers a status read on the blocking pool within that half: a gateway wedged
//!   there stops pinging, and systemd restarts it.

use std::{sync::Arc, time::Duration};

use sd_notify::NotifyState;

use crate::gateway::Gateway;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The one-line summary for `STATUS=`.
fn summary(gateway: &Gateway) -> String {
    let platforms = gateway.registry.list();
    let running = platforms
        .iter()
        .filter(|p| p.state == crate::registry::EntryState::Running)
        .count();
    format!(
        "{running} of {} platforms running; {} chats delivering queued sends",
        platforms.len(),
        gateway.outbox.active_lanes()
    )
}

/// `READY=1` with the status.
pub(crate) fn ready(gateway: &Gateway) {
    let status = summary(gateway);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `RELOADING=1` with the monotonic clock, as systemd 253 and later require.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings the watchdog while the gateway answers (see the module docs); returns at once when
/// the service manager asked for none.
pub(crate) async fn watchdog(gateway: Arc<Gateway>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = period / 2;
    let mut shutdown = gateway.shutdown.subscribe();
    loop {
        let registry = Arc::clone(&gateway.registry);
        let answered = tokio::time::timeout(
            half,
            tokio::task::spawn_blocking(move || registry.list().len()),
        )
        .await;
        if matches!(answered, Ok(Ok(_))) {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "the registry did not answer within {half:?}: the watchdog is not pinged"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(half.saturating_sub(Duration::from_millis(1))) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
    }
}
