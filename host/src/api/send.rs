//! Sending: `send`, `edit`, `delete` and `react`, each body parsed into the one message the
//! gateway sends ([`super::bodies`]), with idempotency keys kept in the store; with
//! `Prefer: respond-async`, queued in the outbox ([`crate::delivery`]) instead.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{ApiError, bodies, installed, json_content};
use crate::{
    gateway::Gateway,
    journal::RecordKind,
    message::{MessageKind, Outbound},
    store::{Claim, Enqueued, NewDelivery},
};

/// Parses a send body, naming the field at fault (a missing, unknown or mistyped one) or where
/// the JSON breaks.
pub fn parse_send(body: &[u8]) -> Result<Outbound, ApiError> {
    bodies::parse_message(crate::message::MessageKind::Message, body)
}

/// `POST /api/platforms/{id}/send`.
pub async fn send(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    send_kind(&gateway, &id, MessageKind::Message, &headers, &body).await
}

/// `POST /api/platforms/{id}/edit`: `{chat_id, message_id, text}`.
pub(super) async fn edit(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    send_kind(&gateway, &id, MessageKind::Edit, &headers, &body).await
}

/// `POST /api/platforms/{id}/delete`: `{chat_id, message_id}`.
pub(super) async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    send_kind(&gateway, &id, MessageKind::Delete, &headers, &body).await
}

/// `POST /api/platforms/{id}/react`: `{chat_id, message_id, emoji, remove?}`.
pub(super) async fn react(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    send_kind(&gateway, &id, MessageKind::Reaction, &headers, &body).await
}

/// The longest `Idempotency-Key` taken.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The request's `Idempotency-Key`, handed to the plugin (level 1.1), whose platform may
/// dedupe by it (Matrix's transaction ids, XMPP's stanza ids); 422 when it is empty, over
/// [`IDEMPOTENCY_KEY_MAX`] characters or not visible ASCII.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim();
    if key.is_empty()
        || key.len() > IDEMPOTENCY_KEY_MAX
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "header `Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"
            ),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// A message of `kind` through platform `id`: the body parsed, the message fitted to what the
/// platform carries, sent. With an `Idempotency-Key`, a repeat gets the first answer (marked
/// `Idempotent-Replayed: true`) and nothing is sent again ([`crate::store::Claim`]).
async fn send_kind(
    gateway: &Arc<Gateway>,
    id: &str,
    kind: MessageKind,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    json_content(headers)?;
    installed(gateway, id)?;
    let mut message = bodies::parse_message(kind, body)?;
    message.idempotency_key = idempotency_key(headers)?;
    if prefers_async(headers) {
        return enqueue(gateway, id, kind, &message, body).await;
    }
    let Some(key) = message.idempotency_key.clone() else {
        let ok = gateway
            .send(id, message, RecordKind::Outbound, None)
            .await?;
        return Ok(Json(ok).into_response());
    };
    let request = request_hash(kind, body);
    let store = Arc::clone(&gateway.store);
    let (platform, owner, ttl) = (
        id.to_owned(),
        gateway.run_id.clone(),
        gateway.config.delivery.idempotency_ttl,
    );
    let claim = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || store.claim(&platform, &key, &request, &owner, ttl))
            .await
    };
    let claim = claim
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))?;
    if claim != Claim::New {
        return seen(claim, &key, id);
    }
    let sent = gateway
        .send(id, message, RecordKind::Outbound, None)
        .await
        .map_err(ApiError::from);
    // The answer is kept, unless it says "try again": then the key is let go, so the retry
    // is sent.
    let kept = match &sent {
        Ok(ok) => Some((200, serde_json::to_string(ok).unwrap_or_default())),
        Err(e) if !e.retryable => Some((e.status.as_u16(), e.body().to_string())),
        Err(_) => None,
    };
    let (store, platform) = (Arc::clone(&gateway.store), id.to_owned());
    let recorded = tokio::task::spawn_blocking(move || match kept {
        Some((status, answer)) => store.answer(&platform, &key, status, &answer),
        None => store.release(&platform, &key),
    })
    .await;
    let failed = match recorded {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(error) = failed {
        tracing::warn!(platform = id, %error, "the answer to an idempotent request was not kept; a repeat will be sent again");
    }
    Ok(Json(sent?).into_response())
}

fn unavailable(e: String) -> ApiError {
    ApiError {
        retryable: true,
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)
    }
}

/// What identifies a request under its key: its kind and body.
fn request_hash(kind: MessageKind, body: &[u8]) -> String {
    let mut bytes = kind.as_str().as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(body);
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// The answer to a request whose key was met before: the first answer (marked
/// `Idempotent-Replayed: true`), or why not.
fn seen(claim: Claim, key: &str, id: &str) -> Result<Response, ApiError> {
    match claim {
        Claim::Answered { status, answer } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok((
                status,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (
                        header::HeaderName::from_static("idempotent-replayed"),
                        "true",
                    ),
                ],
                answer,
            )
                .into_response())
        }
        Claim::Conflict => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Idempotency-Key `{key}` was used for another request on platform `{id}`"),
        )),
        Claim::InProgress | Claim::New => Err(ApiError {
            retryable: true,
            ..ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a request with Idempotency-Key `{key}` is being sent; ask again for its answer"
                ),
            )
        }),
    }
}

/// Whether the request says `Prefer: respond-async` (RFC 7240).
fn prefers_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

/// `Prefer: respond-async`: the request is written to the outbox and answered 202
/// `{"delivery_id", "state": "queued"}` once the write is durable; its chat's lane delivers it.
async fn enqueue(
    gateway: &Arc<Gateway>,
    id: &str,
    kind: MessageKind,
    message: &Outbound,
    body: &[u8],
) -> Result<Response, ApiError> {
    let key = message.idempotency_key.clone();
    let item = NewDelivery {
        platform: id.to_owned(),
        chat: message.chat_id.clone(),
        kind: kind.as_str().to_owned(),
        body: body.to_vec(),
        key: key.clone().map(|k| (k, request_hash(kind, body))),
    };
    let delivery_id = match gateway.outbox.enqueue(item).await.map_err(unavailable)? {
        Enqueued::Queued(delivery_id) => delivery_id,
        Enqueued::Seen(claim) => return seen(claim, key.as_deref().unwrap_or(""), id),
    };
    crate::delivery::wake(gateway, id, &message.chat_id);
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::HeaderName::from_static("preference-applied"),
                "respond-async".to_owned(),
            ),
            (header::LOCATION, format!("/api/deliveries/{delivery_id}")),
        ],
        crate::store::queued_answer(&delivery_id),
    )
        .into_response())
}
