//! The sync thread: log in (or take the token), join the configured rooms, long-poll `/sync`,
//! deliver new messages, accept invites, keep the position; back off while the homeserver is
//! away, and log in again when the token is refused.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hermes_plugin_api::Host;
use serde_json::Value;

use crate::{Config, Saved, Shared, api::Client};

/// The longest wait between two attempts while the homeserver is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until `shared.stop`.
pub(crate) fn run(shared: &Shared, host: &Host) {
    let config = &shared.config;
    let timeout = Duration::from_millis(config.sync_timeout_ms);
    let mut backoff = Duration::from_millis(250);
    while !shared.stop.load(Ordering::Acquire) {
        let result = match current(shared) {
            Some(client) => sync_once(shared, host, &client, timeout),
            None => login(shared).map(|_| ()),
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => {
                {
                    let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                    status.connected = false;
                    status.last_error = Some(e.message.clone());
                }
                if e.unauthorized {
                    // Log in again (a stored token is dropped).
                    *shared.client.write().unwrap_or_else(|e| e.into_inner()) = None;
                    shared
                        .saved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .access_token = None;
                }
                let pause = e.retry_after.unwrap_or(backoff);
                tracing::warn!(error = %e.message, retry_ms = pause.as_millis() as u64, "matrix: retrying");
                sleep_unless_stopped(shared, pause);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn current(shared: &Shared) -> Option<Arc<Client>> {
    shared
        .client
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn sleep_unless_stopped(shared: &Shared, pause: Duration) {
    let until = Instant::now() + pause;
    while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// Logs in (or checks the token), joins the configured rooms, and makes the client current.
fn login(shared: &Shared) -> Result<(), crate::ApiError> {
    let config = &shared.config;
    let mut client = Client::new(
        &config.homeserver,
        Duration::from_millis(config.sync_timeout_ms) + Duration::from_secs(10),
    );
    let saved = shared
        .saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let token = saved.access_token.clone().or(config.access_token.clone());
    let session = match token {
        Some(token) => client.whoami(&token)?,
        None => client.login(
            config.user.as_deref().unwrap_or_default(),
            config.password.as_deref().unwrap_or_default(),
            saved.device_id.as_deref(),
        )?,
    };
    for room in &config.rooms {
        match client.join(room) {
            Ok(id) if room.starts_with('#') => {
                shared
                    .aliases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(room.clone(), id);
            }
            Ok(_) => {}
            Err(e) if e.retryable => return Err(e),
            Err(e) => tracing::warn!(room = %room, error = %e.message, "matrix: cannot join"),
        }
    }
    {
        let mut saved = shared.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.device_id = Some(session.device_id.clone());
        save_store(config, &saved);
    }
    shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .user_id = session.user_id.clone();
    tracing::info!(user = %session.user_id, device = %session.device_id, "matrix: logged in");
    *shared.client.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(client));
    Ok(())
}

/// One `/sync`: deliver what is new (unless it is the first, position-only one), accept
/// invites, keep the position.
fn sync_once(
    shared: &Shared,
    host: &Host,
    client: &Client,
    timeout: Duration,
) -> Result<(), crate::ApiError> {
    let since = shared
        .saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .since
        .clone();
    let answer = client.sync(since.as_deref(), timeout)?;
    let me = shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .user_id
        .clone();
    if since.is_some() {
        deliver(host, &answer, &me, &shared.config.homeserver);
    }
    let invites = answer["rooms"]["invite"].as_object();
    if let Some(invites) = invites.filter(|_| shared.config.auto_join) {
        for room in invites.keys() {
            match client.join(room) {
                Ok(_) => tracing::info!(room = %room, "matrix: joined on invite"),
                Err(e) => {
                    tracing::warn!(room = %room, error = %e.message, "matrix: cannot join on invite");
                }
            }
        }
    }
    if let Some(next) = answer["next_batch"].as_str() {
        let mut saved = shared.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.since = Some(next.to_owned());
        save_store(&shared.config, &saved);
    }
    let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
    status.connected = true;
    status.last_sync = Some(Instant::now());
    status.last_error = None;
    status.syncs += 1;
    Ok(())
}

/// Hands the new messages of joined rooms to the host (every kind: [`crate::events`]), except
/// our own.
fn deliver(host: &Host, answer: &Value, me: &str, base: &str) {
    let Some(rooms) = answer["rooms"]["join"].as_object() else {
        return;
    };
    for (room_id, room) in rooms {
        let Some(events) = room["timeline"]["events"].as_array() else {
            continue;
        };
        for event in events {
            if event["sender"] == me {
                continue;
            }
            let download = |mxc: &str| {
                crate::Client::download_url(base, mxc).unwrap_or_else(|| mxc.to_owned())
            };
            let Some(message) = crate::events::inbound(room_id, event, download) else {
                continue;
            };
            if let Err(e) = host.deliver(&message) {
                tracing::warn!(room = %room_id, error = %e, "the host did not take a matrix message");
            }
        }
    }
}

/// The store's device id and position, if `store_path` is set and readable.
pub(crate) fn load_store(config: &Config) -> Saved {
    let Some(path) = &config.store_path else {
        return Saved::default();
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path, error = %e, "matrix: unreadable store; starting from now");
            Saved::default()
        }),
        Err(_) => Saved::default(),
    }
}

/// Writes the device id and position (never the token) to `store_path`: a new file renamed
/// over the old, so a crash leaves one or the other.
fn save_store(config: &Config, saved: &Saved) {
    let Some(path) = &config.store_path else {
        return;
    };
    let kept = Saved {
        access_token: None,
        ..saved.clone()
    };
    let tmp = format!("{path}.tmp");
    let written = serde_json::to_vec(&kept)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path, error = %e, "matrix: cannot write the store");
    }
}
