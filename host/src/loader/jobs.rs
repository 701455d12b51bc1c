//! The calls into a plugin's vtable that run as worker jobs, with the conversion of their
//! answers to std types done on the worker, while the library is certainly loaded (the
//! `RString`s are freed by the plugin's allocator). Returned texts are cut to the host's caps.

use abi_stable::std_types::{RSlice, RStr};
use hermes_plugin_api::abi::{
    AttachmentFfi, HEALTH_DEGRADED, HEALTH_HEALTHY, InstancePtr, KindFfi, OutboundFfi, OutboundV1_1,
};

use super::{error::CallError, header::Fns};
use crate::message::{Attachment, Health, HealthStatus, Outbound, Receipt, limits};

/// The `health` job: the call and the conversion to std types, on the worker.
pub(super) fn health_job(vtable: Fns<'_>, ptr: InstancePtr) -> Result<Health, String> {
    // SAFETY: `ptr` came from this library's `start` and `stop` has not run (see `send_job`).
    let result = unsafe { (vtable.base.health)(ptr) };
    // Converted here, on the worker: the RStrings are freed by the plugin's allocator.
    match result.into_result() {
        Ok(h) => Ok(Health {
            status: match h.status {
                HEALTH_HEALTHY => HealthStatus::Healthy,
                HEALTH_DEGRADED => HealthStatus::Degraded,
                _ => HealthStatus::Unhealthy,
            },
            detail: limits::cut(h.detail.into_string(), limits::ERROR_BYTES),
        }),
        Err(e) => Err(limits::cut(e.into_string(), limits::ERROR_BYTES)),
    }
}

pub(super) fn health_error(message: String) -> CallError {
    CallError::Plugin {
        call: "health",
        message,
        retryable: false,
        retry_after_ms: None,
    }
}

/// The `send` job: builds the FFI message, calls the plugin's newest `send`, converts the
/// answer to std types while the library is certainly loaded (the `RString`s are freed by the
/// plugin's allocator). A level-1.0 plugin gets the text message alone: the gateway refuses
/// (or turns into text) what it cannot carry before it gets here.
pub(super) fn send_job(
    message: Outbound,
) -> impl FnOnce(Fns<'_>, InstancePtr) -> Result<Receipt, CallError> + Send + 'static {
    move |vtable, ptr| {
        let mut message = message;
        let metadata = serde_json::Value::Object(std::mem::take(&mut message.metadata)).to_string();
        let base = OutboundFfi {
            chat_id: RStr::from_str(&message.chat_id),
            text: RStr::from_str(&message.text),
            reply_to: message.reply_to.as_deref().map(RStr::from_str).into(),
            metadata_json: RStr::from_str(&metadata),
        };
        let failed = |message: String, retryable: bool, retry_after_ms: Option<u64>| {
            let retry_after_ms = retry_after_ms.map(|ms| u32::try_from(ms).unwrap_or(u32::MAX));
            CallError::Plugin {
                call: "send",
                message: limits::cut(message, limits::ERROR_BYTES),
                retryable,
                retry_after_ms,
            }
        };
        let receipt = if let Some(v1_1) = vtable.v1_1 {
            let attachments: Vec<AttachmentFfi<'_>> =
                message.attachments.iter().map(attachment_ffi).collect();
            let ffi = OutboundV1_1 {
                base,
                more: KindFfi {
                    kind: message.kind.to_ffi(),
                    remove: message.remove,
                    thread_id: message.thread_id.as_deref().map(RStr::from_str).into(),
                    target_id: message.target_id.as_deref().map(RStr::from_str).into(),
                    emoji: message.emoji.as_deref().map(RStr::from_str).into(),
                    attachments: RSlice::from_slice(&attachments),
                },
                idempotency_key: message
                    .idempotency_key
                    .as_deref()
                    .map(RStr::from_str)
                    .into(),
            };
            // SAFETY: `ptr` came from this library's `start` and `stop` has not run: the pool
            // is closed before `stop`, and this job was queued before that.
            let result = unsafe { (v1_1.send)(ptr, &ffi) };
            result.into_result().map_err(|e| {
                failed(
                    e.base.message.into_string(),
                    e.base.retryable,
                    e.retry_after_ms.into_option(),
                )
            })?
        } else {
            // SAFETY: as above.
            let result = unsafe { (vtable.base.send)(ptr, &base) };
            result
                .into_result()
                .map_err(|e| failed(e.message.into_string(), e.retryable, None))?
        };
        Ok(Receipt {
            message_id: limits::cut(receipt.message_id.into_string(), limits::MESSAGE_ID_BYTES),
        })
    }
}

fn attachment_ffi(a: &Attachment) -> AttachmentFfi<'_> {
    AttachmentFfi {
        name: RStr::from_str(&a.name),
        mime: RStr::from_str(&a.mime),
        size: a.size,
        data: RSlice::from_slice(&a.data),
        url: a.url.as_deref().map(RStr::from_str).into(),
    }
}
