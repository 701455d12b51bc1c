//! The one place where domain errors become HTTP statuses and a client's words, for the public
//! API and the control socket alike.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    gateway::{SendError, reconfigure::ReconfigureError},
    hotreload::HotReloadError,
    loader::CallError,
    registry::{RegistryError, reload::ReloadRefused},
};

/// An error answer: a status and `{"error", "retryable"}`, with the fields a refused reload
/// adds (`reason`, `serving_generation`).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message for the client.
    pub message: String,
    /// Whether retrying may help.
    pub retryable: bool,
    /// Further fields of the answer's object.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retryable: false,
            details: serde_json::Map::new(),
        }
    }
}

/// The one place where a platform's errors become HTTP statuses. A cause that is the
/// operator's business (paths, loader messages) is logged and left on the platform's status;
/// the client is told which platform and where to look.
impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            RegistryError::LoadFailed { id, cause } => {
                tracing::warn!(platform = %id, error = %cause, "refused: the platform failed to load");
                // A failed load is tried again a second later (a rebuilt library, a peer that
                // came back): a retry may succeed.
                ApiError {
                    retryable: true,
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "platform `{id}` is unavailable: it failed to load; `hermes-host status`, `hermes-host plugin check {id}` or the server log say why"
                        ),
                    )
                }
            }
            RegistryError::StopFailed { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
        }
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let e = match e {
            SendError::Platform(e) => return e.into(),
            other => other,
        };
        let status = match &e {
            SendError::NotJournaled { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            SendError::Unsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SendError::Call { source, .. } => match source {
                // A plugin that says "try later" (its peer is down) is unavailable, not failing.
                CallError::Plugin {
                    retryable: true, ..
                } => StatusCode::SERVICE_UNAVAILABLE,
                CallError::Plugin { .. } => StatusCode::BAD_GATEWAY,
                // The call failed alone; the platform serves on.
                CallError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                // Hung (being replaced), stopping, busy past the deadline or with a full
                // queue: the call never ran and may go through later.
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut error = ApiError {
            retryable: e.retryable(),
            ..ApiError::new(status, e.to_string())
        };
        if let Some(wait) = e.retry_after() {
            error
                .details
                .insert("retry_after_ms".into(), json!(wait.as_millis() as u64));
        }
        error
    }
}

/// A refused reload: 409, with why and the generation that keeps serving.
impl From<ReloadRefused> for ApiError {
    fn from(refused: ReloadRefused) -> Self {
        let mut error = ApiError::new(StatusCode::CONFLICT, refused.to_string());
        error.details.insert("kind".into(), json!(refused.kind));
        error.details.insert("reason".into(), json!(refused.reason));
        error.details.insert(
            "serving_generation".into(),
            json!(refused.serving_generation),
        );
        error
    }
}

/// Hot reload: not allowed 403, an unknown plugin 404, a watch that cannot start 422.
impl From<HotReloadError> for ApiError {
    fn from(e: HotReloadError) -> Self {
        let status = match &e {
            HotReloadError::NotAllowed { .. } => StatusCode::FORBIDDEN,
            HotReloadError::Unknown(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A refused config reload: 409 (nothing changed).
impl From<ReconfigureError> for ApiError {
    fn from(e: ReconfigureError) -> Self {
        ApiError::new(StatusCode::CONFLICT, e.to_string())
    }
}

impl ApiError {
    /// The answer's JSON object: `{"error", "retryable", ...details}`.
    pub fn body(&self) -> serde_json::Value {
        let mut body = self.details.clone();
        body.insert("error".into(), json!(self.message));
        body.insert("retryable".into(), json!(self.retryable));
        serde_json::Value::Object(body)
    }
}

/// With a `retry_after_ms` (the platform's, or the rate budget's), the answer carries it as
/// `Retry-After` too, in whole seconds rounded up.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let retry_after = self
            .details
            .get("retry_after_ms")
            .and_then(serde_json::Value::as_u64)
            .map(|ms| ms.div_ceil(1000).max(1).to_string());
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&secs)
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}
