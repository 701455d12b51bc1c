//! The control API: HTTP over a Unix socket, for the CLI and operators.
//!
//! The socket is created mode 0600, and removed on exit; its folder is created 0700 when missing
//! and otherwise left as it is (see [`bind`]). A socket left by a dead server is replaced; one a
//! live server answers on is an error, and so is any other file at the path. Nothing loads, unloads
//! or reloads through the public API: only through here (`curl --unix-socket` works too).
//!
//! | route | what it does |
//! |---|---|
//! | `GET /status` | the server and every platform, with `resident_stale_libraries` |
//! | `POST /platforms/{id}/load` | load and start a platform now |
//! | `POST /platforms/{id}/unload` | stop and unload it; the report says whether it is unmapped |
//! | `POST /platforms/{id}/send` | a send, as `POST /api/platforms/{id}/send` |
//! | `POST /platforms/{id}/reload` | the reload transaction; 409 with the reason when refused |
//! | `POST` / `DELETE /platforms/{id}/hotreload` | start / stop watching the plugin's library |
//! | `GET /hotreload` | every watched or reloaded plugin's hot-reload status |
//! | `POST /config/reload` | re-read hermes.toml, applied or refused as a whole (as SIGHUP) |
//! | `GET /deliveries/{id}`, `GET /deadletters`, `POST /deadletters/{id}/replay`, `POST /deadletters/replay?platform=`, `DELETE /deadletters/{id}` | queued sends and dead letters, as under `/api/` |

use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use serde::{Deserialize, Serialize};

use crate::{
    api::{self, ApiError},
    gateway::{Gateway, Warmup},
    hotreload::WatchStatus,
    journal::{JournalStatus, RecordKind},
    registry::PlatformStatus,
};

mod bind;
mod client;

pub use bind::{BindError, bind};
pub(crate) use client::percent_encoded;
pub use client::{Answer, Client, ClientError, Refusal};

/// `GET /status`: the server and every platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's process id.
    pub pid: u32,
    /// Seconds since `serve` began.
    pub uptime_secs: f64,
    /// The public API's address.
    pub listen: String,
    /// The config file it runs with.
    pub config: Option<PathBuf>,
    /// Warm-up of `background` platforms.
    pub warmup: Warmup,
    /// Requests and calls in flight.
    pub in_flight: usize,
    /// The journal.
    pub journal: JournalStatus,
    /// Shadow copies still mapped that no instance serves from (`None`: cannot be read).
    pub resident_stale_libraries: Option<usize>,
    /// Their paths.
    pub stale_paths: Option<Vec<PathBuf>>,
    /// Every platform, by id.
    pub platforms: Vec<PlatformStatus>,
}

/// `GET /hotreload`: every watched or reloaded plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HotReloadOverview {
    /// Whether hot reload is allowed (`[hotreload] allowed` or `serve --dev`).
    pub allowed: bool,
    /// The debounce for a library still being written.
    pub debounce_ms: u64,
    /// Each plugin watched or reloaded.
    pub plugins: Vec<WatchStatus>,
    /// Shadow copies still mapped that no instance serves from.
    pub resident_stale_libraries: Option<usize>,
}

/// The control router.
pub fn app(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/platforms/{id}/load", post(load))
        .route("/platforms/{id}/unload", post(unload))
        .route(
            "/platforms/{id}/send",
            post(send).layer(axum::extract::DefaultBodyLimit::max(api::SEND_BODY_LIMIT)),
        )
        .route("/platforms/{id}/reload", post(reload))
        .route(
            "/platforms/{id}/hotreload",
            post(hotreload_enable).delete(hotreload_disable),
        )
        .route("/hotreload", get(hotreload_status))
        .route("/config/reload", post(reload_config))
        .route("/journal/reopen", post(journal_reopen))
        .route("/deliveries/{id}", get(api::deliveries::delivery))
        .route("/deadletters", get(api::deliveries::dead_letters))
        .route("/deadletters/replay", post(api::deliveries::replay_all))
        .route(
            "/deadletters/{id}",
            axum::routing::delete(api::deliveries::drop_dead),
        )
        .route("/deadletters/{id}/replay", post(api::deliveries::replay))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(api::BODY_LIMIT))
        .layer(axum::middleware::map_response(api::json_errors))
        .with_state(gateway)
}

async fn status(State(gateway): State<Arc<Gateway>>) -> Json<ServerStatus> {
    let stale = gateway.registry.resident_stale_libraries();
    Json(ServerStatus {
        pid: std::process::id(),
        uptime_secs: gateway.started().elapsed().as_secs_f64(),
        listen: gateway.config.server.listen.to_string(),
        config: gateway.config.source.clone(),
        warmup: *gateway.warmup.borrow(),
        in_flight: gateway.in_flight(),
        journal: gateway.journal.status(),
        resident_stale_libraries: stale.as_ref().map(Vec::len),
        stale_paths: stale,
        platforms: gateway.registry.list(),
    })
}

async fn load(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let instance = gateway.instance(&id).await?;
    Ok(Json(json!({ "platform": id, "generation": instance.generation(), "version": instance.plugin_version() })).into_response())
}

async fn unload(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    api::installed(&gateway, &id)?;
    let registry = Arc::clone(&gateway.registry);
    let platform = id.clone();
    let report = blocking(move || registry.unload(&platform)).await??;
    Ok(
        Json(json!({ "platform": id, "was_running": report.is_some(), "report": report }))
            .into_response(),
    )
}

async fn send(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let message = api::parse_send(&body)?;
    let _guard = gateway.begin();
    let ok = gateway
        .send(&id, message, RecordKind::Outbound, None)
        .await?;
    Ok(Json(ok).into_response())
}

/// Reopens the journal's path before the writer's next batch; answers at once with its status.
async fn journal_reopen(State(gateway): State<Arc<Gateway>>) -> Response {
    gateway.journal.reopen();
    Json(gateway.journal.status()).into_response()
}

async fn reload_config(State(gateway): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    Ok(Json(gateway.reload_config().await?).into_response())
}

async fn reload(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    api::installed(&gateway, &id)?;
    // The reload takes the platform's table as hermes.toml has it now (a file that does not
    // parse leaves the table in force); a refused reload puts the old table back.
    let entry = gateway
        .registry
        .entry(&id)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let previous = entry.platform_config();
    if let Some(file) = &gateway.config.source {
        match crate::config::Config::load(file) {
            Ok(now) => {
                let table = crate::config::effective_table(
                    &id,
                    now.platforms.get(&id),
                    entry.enabled_by_env(),
                )
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        format!("reload of `{id}` refused: {e}"),
                    )
                })?;
                // The same refusal as at start and at a config reload.
                if let Some(refusal) = table
                    .as_ref()
                    .and_then(|t| gateway.registry.idle_unload_refusal(&id, t))
                {
                    return Err(crate::reload::ReloadRefused {
                        platform: id.clone(),
                        kind: crate::reload::RefusalKind::Config,
                        reason: format!("{}: {refusal}", file.display()),
                        serving_generation: entry.running().map(|i| i.generation()),
                    }
                    .into());
                }
                entry.set_platform_config(table);
            }
            Err(e) => {
                tracing::warn!(error = %e, "plugin reload: the config file does not parse; the platform's table in force is kept");
            }
        }
    }
    let registry = Arc::clone(&gateway.registry);
    let platform = id.clone();
    let result = blocking(move || registry.reload(&platform, "cli")).await?;
    if result.is_err() {
        entry.set_platform_config(previous.map(|p| (*p).clone()));
    }
    Ok(Json(result?).into_response())
}

async fn hotreload_enable(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(blocking(move || gateway.hotreload.enable(&id)).await??).into_response())
}

async fn hotreload_disable(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(blocking(move || gateway.hotreload.disable(&id)).await??).into_response())
}

async fn hotreload_status(State(gateway): State<Arc<Gateway>>) -> Json<HotReloadOverview> {
    Json(HotReloadOverview {
        allowed: gateway.hotreload.allowed(),
        debounce_ms: gateway.config.hotreload.debounce.as_millis() as u64,
        plugins: gateway.hotreload.status(),
        resident_stale_libraries: gateway.registry.resident_stale_libraries().map(|v| v.len()),
    })
}

/// Runs `f` (it loads, stops or reloads plugins) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
