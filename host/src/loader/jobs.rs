//! The calls into a plugin's vtable that run as worker jobs, with the conversion of their
//! answers to std types done on the worker, while the library is certainly loaded (the
//! `RString`s are freed by the plugin's allocator). Returned texts are cut to the host's caps.

use abi_stable::std_types::RStr;
use hermes_plugin_api::abi::{
    HEALTH_DEGRADED, HEALTH_HEALTHY, InstancePtr, OutboundFfi, PluginVTable,
};

use super::error::CallError;
use crate::message::{Health, HealthStatus, Outbound, Receipt, limits};

/// The `health` job: the call and the conversion to std types, on the worker.
pub(super) fn health_job(vtable: &PluginVTable, ptr: InstancePtr) -> Result<Health, String> {
    // SAFETY: `ptr` came from this library's `start` and `stop` has not run (see `send_job`).
    let result = unsafe { (vtable.health)(ptr) };
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
    }
}

/// The `send` job: builds the FFI message, calls the plugin, converts the answer to std types
/// while the library is certainly loaded (the `RString`s are freed by the plugin's allocator).
pub(super) fn send_job(
    message: Outbound,
) -> impl FnOnce(&PluginVTable, InstancePtr) -> Result<Receipt, (String, bool)> + Send + 'static {
    move |vtable, ptr| {
        let metadata = serde_json::Value::Object(message.metadata).to_string();
        let ffi = OutboundFfi {
            chat_id: RStr::from_str(&message.chat_id),
            text: RStr::from_str(&message.text),
            reply_to: message.reply_to.as_deref().map(RStr::from_str).into(),
            metadata_json: RStr::from_str(&metadata),
        };
        // SAFETY: `ptr` came from this library's `start` and `stop` has not run: the pool is
        // closed before `stop`, and this job was queued before that.
        let result = unsafe { (vtable.send)(ptr, &ffi) };
        match result.into_result() {
            Ok(r) => Ok(Receipt {
                message_id: limits::cut(r.message_id.into_string(), limits::MESSAGE_ID_BYTES),
            }),
            Err(e) => Err((
                limits::cut(e.message.into_string(), limits::ERROR_BYTES),
                e.retryable,
            )),
        }
    }
}
