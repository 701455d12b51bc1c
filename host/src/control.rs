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

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{
    api::{self, ApiError},
    gateway::Gateway,
    journal::RecordKind,
};

/// The control router.
pub fn app(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/platforms/{id}/load", post(load))
        .route("/platforms/{id}/unload", post(unload))
        .route("/platforms/{id}/send", post(send))
        .route("/platforms/{id}/reload", post(reload))
        .route(
            "/platforms/{id}/hotreload",
            post(hotreload_enable).delete(hotreload_disable),
        )
        .route("/hotreload", get(hotreload_status))
        .route("/config/reload", post(reload_config))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(api::BODY_LIMIT))
        .layer(axum::middleware::map_response(api::json_errors))
        .with_state(gateway)
}

async fn status(State(gateway): State<Arc<Gateway>>) -> Response {
    let stale = gateway.registry.resident_stale_libraries();
    Json(json!({
        "pid": std::process::id(),
        "uptime_secs": gateway.started().elapsed().as_secs_f64(),
        "listen": gateway.config.server.listen.to_string(),
        "config": gateway.config.source,
        "warmup": *gateway.warmup.borrow(),
        "in_flight": gateway.in_flight(),
        "journal": gateway.journal.status(),
        "resident_stale_libraries": stale.as_ref().map(Vec::len),
        "stale_paths": stale,
        "platforms": gateway.registry.list(),
    }))
    .into_response()
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

async fn reload_config(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.reload_config().await {
        Ok(change) => Json(change).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string(), "retryable": false })),
        )
            .into_response(),
    }
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
            Ok(now) => entry.set_platform_config(now.platforms.get(&id).cloned()),
            Err(e) => {
                tracing::warn!(error = %e, "plugin reload: the config file does not parse; the platform's table in force is kept")
            }
        }
    }
    let registry = Arc::clone(&gateway.registry);
    let platform = id.clone();
    let result = blocking(move || registry.reload(&platform, "cli")).await?;
    if result.is_err() {
        entry.set_platform_config(previous.map(|p| (*p).clone()));
    }
    Ok(match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(refused) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": refused.to_string(),
                "reason": refused.reason,
                "serving_generation": refused.serving_generation,
                "retryable": false,
            })),
        )
            .into_response(),
    })
}

fn hotreload_answer(
    result: Result<crate::watch::WatchStatus, crate::watch::HotReloadError>,
) -> Result<Response, ApiError> {
    use crate::watch::HotReloadError;
    match result {
        Ok(status) => Ok(Json(status).into_response()),
        Err(e @ HotReloadError::NotAllowed { .. }) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e @ HotReloadError::Unknown(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
    }
}

async fn hotreload_enable(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    hotreload_answer(blocking(move || gateway.hotreload.enable(&id)).await?)
}

async fn hotreload_disable(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    hotreload_answer(blocking(move || gateway.hotreload.disable(&id)).await?)
}

async fn hotreload_status(State(gateway): State<Arc<Gateway>>) -> Response {
    Json(json!({
        "allowed": gateway.hotreload.allowed(),
        "debounce_ms": gateway.config.hotreload.debounce.as_millis() as u64,
        "plugins": gateway.hotreload.status(),
        "resident_stale_libraries": gateway.registry.resident_stale_libraries().map(|v| v.len()),
    }))
    .into_response()
}

/// Runs `f` (it loads, stops or reloads plugins) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Why the control socket could not be bound. Each names the path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A server answers on the socket.
    #[error("another hermes-host server is running on the control socket {}", .0.display())]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is never deleted.
    #[error("control socket {}: a {} is at that path; refusing to replace it (remove it, or set `server.control_socket` to another path)", .path.display(), .kind)]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
    },
    /// The folder is writable by others without the sticky bit: anyone could swap the socket.
    #[error("control socket folder {} is writable by others without the sticky bit (mode {mode:o}); choose a private folder for `server.control_socket`", .path.display())]
    UnsafeFolder {
        /// The folder.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A file system call failed.
    #[error("control socket {}: {what}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Binds the control socket (mode 0600). It touches nothing but its own path:
/// - a missing folder is created 0700; an existing one is never changed, and one that others
///   can write without the sticky bit is refused;
/// - a socket at the path is replaced only once a connection attempt is refused (nobody
///   listens); a live one is [`BindError::InUse`]; any other file is refused, never deleted.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, BindError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
    let io = |what, source| BindError::Io {
        path: path.to_owned(),
        what,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) => {
                let mode = meta.permissions().mode();
                if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                    return Err(BindError::UnsafeFolder {
                        path: dir.to_owned(),
                        mode: mode & 0o7777,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io("creating its folder", e))?;
            }
            Err(e) => return Err(io("reading its folder", e)),
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
                tracing::info!(socket = %path.display(), "replaced a stale control socket (nobody listened on it)");
            }
            Err(e) => return Err(io("checking whether a server listens", e)),
        },
        Ok(meta) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
                kind: crate::manifest::describe_file_type(meta.file_type()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading the path", e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600", e))?;
    Ok(listener)
}

/// Why the CLI could not talk to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no hermes-host server is running (nothing answers on the control socket {}; start one with `hermes-host serve`)", .0.display())]
    NotRunning(PathBuf),
    /// The exchange failed.
    #[error("control socket {}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    /// The answer was not HTTP.
    #[error("control socket {}: malformed answer: {}", .0.display(), .1)]
    Protocol(PathBuf, String),
}

/// One request to the control API: `(status, JSON body)`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_owned())
        }
        _ => ClientError::Io(socket.to_owned(), e),
    })?;
    let io = |e| ClientError::Io(socket.to_owned(), e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: hermes\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let bad = |m: &str| ClientError::Protocol(socket.to_owned(), m.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("header not UTF-8"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(&e.to_string()))?
    };
    Ok((status, json))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
