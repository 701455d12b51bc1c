//! The public HTTP API (JSON), and the pieces the control API shares with it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok"}` (never needs the token) |
//! | `GET /api/platforms` | every platform's status; loads nothing |
//! | `GET /api/platforms/{id}` | one platform's status, with health when running; loads nothing |
//! | `POST /api/platforms/{id}/send` | `{"chat_id","text","reply_to"?,"thread_id"?,"attachments"?,"metadata"?}` -> `{"message_id","platform","generation","parts"?}` |
//! | `POST /api/platforms/{id}/edit` | `{"chat_id","message_id","text"}` -> as `send` |
//! | `POST /api/platforms/{id}/delete` | `{"chat_id","message_id"}` -> as `send` |
//! | `POST /api/platforms/{id}/react` | `{"chat_id","message_id","emoji","remove"?}` -> as `send` |
//! | `GET /api/deliveries/{id}` | a queued send (`Prefer: respond-async`): `{"delivery_id","platform","chat_id","state","attempts","message_id"?,"last_error"?,"created_ms","updated_ms"}` |
//! | `GET /api/deadletters?platform=` | dead letters, oldest first |
//! | `POST /api/deadletters/{id}/replay`, `POST /api/deadletters/replay?platform=` | queue one, or all (of a platform), again |
//! | `DELETE /api/deadletters/{id}` | drop one |
//! | `GET /api/events` | Server-Sent Events, one `data:` JSON per inbound message, and one per queued send sent or dead (`"kind":"delivery"`) |
//! | `GET /api/warmup_status`, `GET /api/warmup_wait?timeout_ms=` | warm-up of `background` platforms |
//! | `GET /api/idle` | `{"idle","seconds_since_activity","in_flight"}` for scale-to-zero |
//! | `GET /api/startup_profile` | start-up phase and platform timings |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are `{"error": "...", "retryable": bool}` with 403 (a `Host` or `Origin` that is not
//! the gateway's: [`guard`]), 404 (unknown platform), 408 (a body too slow), 413 (body over
//! 64 KiB; a send's, over [`SEND_BODY_LIMIT`]), 415 (a body not sent as `application/json`),
//! 422 (bad body, naming the field; or what the platform cannot carry), 502
//! (the plugin refused), 503 (not available), 504 (timed out). With `api_token` set, every route but `/health` needs
//! `Authorization: Bearer <token>`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::StreamExt;
use serde_json::json;

use crate::gateway::Gateway;

pub(crate) mod bodies;
pub(crate) mod deliveries;
mod error;
pub mod guard;
mod readiness;
mod send;

pub use error::ApiError;
pub use send::{IDEMPOTENCY_KEY_MAX, parse_send, send};
use send::{delete, edit, react};

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A send's body may carry one attachment of the host's largest size, as base64 (4/3 of it),
/// beside the rest of a body; larger files go by URL.
pub const SEND_BODY_LIMIT: usize =
    (crate::message::limits::ATTACHMENT_BYTES as usize) / 3 * 4 + BODY_LIMIT;

/// The public API router, without a socket (tests call it directly).
pub fn app(gateway: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/api/platforms", get(platforms))
        .route("/api/platforms/{id}", get(platform))
        .route(
            "/api/platforms/{id}/send",
            post(send).layer(DefaultBodyLimit::max(SEND_BODY_LIMIT)),
        )
        .route("/api/platforms/{id}/edit", post(edit))
        .route("/api/platforms/{id}/delete", post(delete))
        .route("/api/platforms/{id}/react", post(react))
        .route("/api/deliveries/{id}", get(deliveries::delivery))
        .route("/api/deadletters", get(deliveries::dead_letters))
        .route("/api/deadletters/replay", post(deliveries::replay_all))
        .route(
            "/api/deadletters/{id}",
            axum::routing::delete(deliveries::drop_dead),
        )
        .route("/api/deadletters/{id}/replay", post(deliveries::replay))
        .route("/api/events", get(events))
        .route("/api/warmup_status", get(readiness::warmup_status))
        .route("/api/warmup_wait", get(readiness::warmup_wait))
        .route("/api/idle", get(readiness::idle))
        .route("/api/startup_profile", get(readiness::startup_profile))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&gateway),
            authorize,
        ));
    Router::new()
        .route("/", get(status_page))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response(json_errors))
        .with_state(gateway)
}

/// The status page: static HTML and JS compiled into the binary (no CDN, no build step). It
/// holds no data: it reads the API like any client, with the token when one is configured.
const STATUS_PAGE: &str = include_str!("../status_page.html");

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// Unknown routes: the JSON error, naming the path.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {}; see docs/api.md for the API", uri.path()),
    )
}

/// Turns an error answer that is not JSON (axum's own: 400, 405, 413, 415...) into the
/// documented `{"error", "retryable"}`, keeping its status and text.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let mut answer = ApiError::new(status, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

async fn authorize(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &gateway.config.server.api_token {
        // The scheme is case-insensitive (RFC 9110, 11.1); the token is not.
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                .into_response();
        }
    }
    let _guard = (request.uri().path() != "/api/events" && request.uri().path() != "/api/idle")
        .then(|| gateway.begin());
    next.run(request).await
}

/// `GET /api/platforms`.
pub async fn platforms(State(gateway): State<Arc<Gateway>>) -> Response {
    Json(gateway.registry.list()).into_response()
}

/// `GET /api/platforms/{id}`.
pub async fn platform(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let entry = gateway
        .registry
        .entry(&id)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let mut detail = serde_json::to_value(entry.status()).unwrap_or_default();
    if let Some(instance) = entry.running() {
        // Only a short wait here: an instance that is busy or hung must not hold up a status page.
        detail["health"] = match instance.health_async(Duration::from_secs(2)).await {
            Ok(h) => json!(h),
            Err(e) => json!({ "status": "unhealthy", "detail": e.to_string() }),
        };
    }
    detail["library"] = match gateway.registry.resolve_library(entry) {
        Ok(p) => json!(p),
        Err(e) => json!({ "error": e.to_string() }),
    };
    if let Some(report) = entry.last_unload() {
        detail["last_unload"] = json!(report);
    }
    detail["capabilities"] = json!(entry.manifest().capabilities);
    if let Some(outbox) = deliveries::outbox_snapshot(&gateway).await {
        detail["outbox"] = json!(outbox.stats.get(&id).cloned().unwrap_or_default());
    }
    detail["reloads"] = json!(entry.reload_stats());
    detail["hotreload"] = json!(gateway.hotreload.status_of(&id).map(|s| s.watching));
    Ok(Json(detail).into_response())
}

/// 404 unless a plugin with `id` is installed (ids are looked up, never used as paths).
pub fn installed(gateway: &Gateway, id: &str) -> Result<(), ApiError> {
    if gateway.registry.is_registered(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no plugin with id `{id}` is installed"),
        ))
    }
}

/// 415 unless the body is declared `application/json` (or `application/<x>+json`): a page on
/// another origin can POST `text/plain` or a form without a preflight, never JSON.
pub fn json_content(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "the body must be sent as `Content-Type: application/json` (got {:?})",
            if given.is_empty() { "none" } else { given }
        ),
    ))
}

/// How often an idle SSE stream gets a comment line, so proxies and clients see it alive.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/events`: the SSE stream. Frames are the shared buffers the fan-out encoded once
/// ([`crate::events`]), written as they are: no copy per client.
async fn events(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut shutdown = gateway.shutdown.subscribe();
    let messages = gateway.events.subscribe().map(|event| match event {
        crate::events::Event::Message(frame) => frame,
        crate::events::Event::Lagged { queued } => {
            Bytes::from(format!("event: lagged\ndata: {queued}\n\n"))
        }
    });
    let keep_alive = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(SSE_KEEP_ALIVE).await;
        Some((Bytes::from_static(b":\n\n"), ()))
    });
    // The stream ends when the messages end (the client lagged) or at shutdown.
    let stream = futures_util::stream::select(
        messages
            .map(Some)
            .chain(futures_util::stream::once(async { None })),
        keep_alive.map(Some),
    )
    .take_while(|frame| std::future::ready(frame.is_some()))
    .filter_map(std::future::ready)
    .take_until(async move {
        let _ = shutdown.wait_for(|down| *down).await;
    })
    .map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let platforms = gateway.registry.list();
    let reloads = gateway
        .registry
        .entries()
        .map(|e| e.reload_stats())
        .fold((0, 0), |(d, r), s| (d + s.done, r + s.refused));
    let journal = gateway.journal.status();
    let outbox = deliveries::outbox_snapshot(&gateway).await;
    let text = gateway.metrics.render(&crate::metrics::Snapshot {
        outbox: outbox.as_ref(),
        platforms: &platforms,
        reloads,
        in_flight: gateway.in_flight(),
        resident_stale_libraries: gateway.registry.resident_stale_libraries().map(|v| v.len()),
        journal: &journal,
    });
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if crate::metrics::wants_prometheus_text(accept) {
        let text = crate::metrics::to_prometheus_text(&text);
        return (
            [(
                header::CONTENT_TYPE,
                crate::metrics::PROMETHEUS_CONTENT_TYPE,
            )],
            text,
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
