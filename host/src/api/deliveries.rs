//! Queued sends and dead letters over HTTP (the control socket serves the same handlers):
//! `GET /api/deliveries/{id}`, `GET /api/deadletters`, `POST /api/deadletters/{id}/replay`,
//! `POST /api/deadletters/replay`, `DELETE /api/deadletters/{id}`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::{gateway::Gateway, metrics::OutboxSnapshot, store::Store};

/// `?platform=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Of {
    platform: Option<String>,
}

/// [`Gateway::on_store`], a failure answered 503 (retryable).
async fn with_store<T: Send + 'static>(
    gateway: &Gateway,
    f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    gateway.on_store(f).await.map_err(|e| ApiError {
        retryable: true,
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)
    })
}

fn unknown(id: &str, what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no {what} `{id}`"))
}

/// `GET /api/deliveries/{id}`.
pub(crate) async fn delivery(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    let found = with_store(&gateway, move |s| s.delivery(&key)).await?;
    let delivery = found.ok_or_else(|| unknown(&id, "delivery"))?;
    Ok(Json(json!(gateway.outbox.sending(delivery))))
}

/// `GET /api/deadletters?platform=`.
pub(crate) async fn dead_letters(
    State(gateway): State<Arc<Gateway>>,
    Query(of): Query<Of>,
) -> Result<Json<Value>, ApiError> {
    let letters = with_store(&gateway, move |s| s.dead_letters(of.platform.as_deref())).await?;
    Ok(Json(json!({ "dead_letters": letters })))
}

/// Queues the dead letters `id` names (or all, of `platform`) again and wakes their lanes; how
/// many.
async fn requeue(
    gateway: &Arc<Gateway>,
    id: Option<String>,
    platform: Option<String>,
) -> Result<usize, ApiError> {
    let (replayed, chats) = with_store(gateway, move |s| {
        s.replay(id.as_deref(), platform.as_deref())
    })
    .await?;
    for (platform, chat) in &chats {
        crate::delivery::wake(gateway, platform, chat);
    }
    Ok(replayed)
}

/// `POST /api/deadletters/{id}/replay`: 404 when it is not a dead letter.
pub(crate) async fn replay(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if requeue(&gateway, Some(id.clone()), None).await? == 0 {
        return Err(unknown(&id, "dead letter"));
    }
    Ok(Json(json!({ "delivery_id": id, "state": "queued" })))
}

/// `POST /api/deadletters/replay?platform=`: every dead letter (of the platform).
pub(crate) async fn replay_all(
    State(gateway): State<Arc<Gateway>>,
    Query(of): Query<Of>,
) -> Result<Json<Value>, ApiError> {
    let replayed = requeue(&gateway, None, of.platform).await?;
    Ok(Json(json!({ "replayed": replayed })))
}

/// `DELETE /api/deadletters/{id}`.
pub(crate) async fn drop_dead(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    if !with_store(&gateway, move |s| s.drop_dead(&key)).await? {
        return Err(unknown(&id, "dead letter"));
    }
    Ok(Json(json!({ "delivery_id": id, "dropped": true })))
}

/// The outbox for metrics and status; `None` (logged) when the store cannot be read.
pub(crate) async fn outbox_snapshot(gateway: &Gateway) -> Option<OutboxSnapshot> {
    match with_store(gateway, Store::outbox_stats).await {
        Ok(stats) => Some(OutboxSnapshot {
            stats,
            headroom: gateway.outbox.budgets.headroom(),
        }),
        Err(e) => {
            tracing::warn!(error = %e.message, "the outbox could not be read");
            None
        }
    }
}
