//! What a supervisor asks: warm-up of `background` platforms, whether the gateway is idle
//! (scale to zero), and where start-up time went.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::gateway::{Gateway, Warmup};

fn warmup_json(gateway: &Gateway) -> serde_json::Value {
    let status = *gateway.warmup.borrow();
    let platforms: Vec<_> = gateway
        .registry
        .entries()
        .filter(|e| {
            e.platform_config()
                .is_some_and(|p| p.start == crate::config::StartMode::Background)
        })
        .map(|e| e.status())
        .collect();
    // Each background platform is pending (not started yet), completed (started) or failed.
    let (mut pending, mut completed, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for s in &platforms {
        use crate::registry::EntryState::*;
        match s.state {
            Running | Draining | Hung | Crashed | Stopping | Unloaded => {
                completed.push(s.id.as_str());
            }
            Failed | Invalid => failed.push(s.id.as_str()),
            Registered | Loading | Starting => pending.push(s.id.as_str()),
        }
    }
    json!({
        "status": status,
        "progress": format!("{}/{}", completed.len() + failed.len(), platforms.len()),
        "pending": pending,
        "completed": completed,
        "failed": failed,
        "platforms": platforms
            .iter()
            .map(|s| json!({ "id": s.id, "state": s.state, "error": s.error }))
            .collect::<Vec<_>>(),
    })
}

pub(super) async fn warmup_status(State(gateway): State<Arc<Gateway>>) -> Response {
    Json(warmup_json(&gateway)).into_response()
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    timeout_ms: Option<u64>,
}

pub(super) async fn warmup_wait(
    State(gateway): State<Arc<Gateway>>,
    Query(q): Query<WaitQuery>,
) -> Response {
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(600_000));
    let mut rx = gateway.warmup.subscribe();
    let done = tokio::time::timeout(timeout, rx.wait_for(|w| *w != Warmup::Pending)).await;
    let status = if done.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    (status, Json(warmup_json(&gateway))).into_response()
}

#[derive(Deserialize)]
pub(super) struct IdleQuery {
    quiet_secs: Option<f64>,
}

/// Idle for a scale-to-zero supervisor: nothing in flight, warm-up done, no SSE client, no
/// running platform that holds inbound connections (manifest `inbound`), and no traffic for
/// the quiet period. `busy` says what holds it.
pub(super) async fn idle(
    State(gateway): State<Arc<Gateway>>,
    Query(q): Query<IdleQuery>,
) -> Result<Response, ApiError> {
    let quiet = match q.quiet_secs {
        None => gateway.config.server.idle_quiet,
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s.min(86_400.0)),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "quiet_secs: a number of seconds, 0 or more",
            ));
        }
    };
    let in_flight = gateway.in_flight();
    let sse_clients = gateway.events.subscribers();
    let mut busy = Vec::new();
    if in_flight > 0 {
        busy.push(format!("{in_flight} requests or calls in flight"));
    }
    if *gateway.warmup.borrow() == Warmup::Pending {
        busy.push("warm-up pending".to_owned());
    }
    if sse_clients > 0 {
        busy.push(format!("{sse_clients} SSE clients connected"));
    }
    for entry in gateway.registry.entries() {
        // A load, start, reload or stop in progress (from any caller: a send, the control
        // socket, the supervisor, a config reload) is work a supervisor must not cut short.
        let state = entry.status().state;
        if matches!(
            state,
            crate::registry::EntryState::Loading
                | crate::registry::EntryState::Starting
                | crate::registry::EntryState::Draining
                | crate::registry::EntryState::Stopping
        ) {
            busy.push(format!(
                "platform `{}` is {}",
                entry.manifest().id,
                state.as_str()
            ));
        }
        if entry.manifest().inbound && entry.running().is_some() {
            busy.push(format!(
                "platform `{}` holds inbound connections",
                entry.manifest().id
            ));
        }
    }
    // Anything that cannot be read counts as busy: a supervisor must never stop us by mistake.
    let since = gateway.since_activity(None);
    match since {
        Some(since) if since < quiet => busy.push(format!(
            "traffic {:.1} s ago (quiet period {:.0} s)",
            since.as_secs_f64(),
            quiet.as_secs_f64()
        )),
        Some(_) => {}
        None => busy.push("activity unreadable".to_owned()),
    }
    Ok(Json(json!({
        "idle": busy.is_empty(),
        "busy": busy,
        "seconds_since_activity": since.map_or(0.0, |s| s.as_secs_f64()),
        "quiet_secs": quiet.as_secs_f64(),
        "in_flight": in_flight,
        "requests_in_flight": gateway.requests_in_flight(),
        "plugin_calls_in_flight": gateway.plugin_calls_in_flight(),
        "sse_clients": sse_clients,
    }))
    .into_response())
}

pub(super) async fn startup_profile(State(gateway): State<Arc<Gateway>>) -> Response {
    let profile = gateway
        .profile
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    let phases: Vec<_> = profile
        .phases
        .iter()
        .map(|(name, ms)| json!({ "name": name, "ms": ms }))
        .collect();
    Json(json!({
        "phases": phases,
        "ready_ms": profile.ready_ms,
        "warmup_ms": profile.warmup_ms,
        "platforms": profile.platforms,
    }))
    .into_response()
}
