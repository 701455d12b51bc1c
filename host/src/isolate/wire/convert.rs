//! Between the host's types and the wire's: call names back to the loader's `&'static str`,
//! JSON objects as text (postcard cannot carry a `serde_json::Value`).

use std::time::Duration;

use super::{
    WireAttachment, WireCallError, WireInbound, WireMore, WireOutbound, WireState, WireStopError,
    WireUnload,
};
use crate::{
    loader::{CallError, StopError, UnloadReport},
    message::{Attachment, Health, HealthStatus, Inbound, MessageKind, Outbound, PluginState},
};

/// A call name as the loader's errors hold it.
fn call_name(name: &str) -> &'static str {
    [
        "send",
        "health",
        "start",
        "stop",
        "validate_config",
        "export_state",
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("call")
}

impl From<&CallError> for WireCallError {
    fn from(e: &CallError) -> Self {
        match e {
            CallError::Plugin {
                call,
                message,
                retryable,
                retry_after_ms,
            } => WireCallError::Plugin {
                call: (*call).to_owned(),
                message: message.clone(),
                retryable: *retryable,
                retry_after_ms: *retry_after_ms,
            },
            CallError::Timeout { call, after } => WireCallError::Timeout {
                call: (*call).to_owned(),
                after_ms: after.as_millis() as u64,
            },
            CallError::Unhealthy => WireCallError::Unhealthy,
            CallError::Expired { call, waited } => WireCallError::Expired {
                call: (*call).to_owned(),
                waited_ms: waited.as_millis() as u64,
            },
            CallError::QueueFull { capacity } => WireCallError::QueueFull {
                capacity: *capacity as u64,
            },
            _ => WireCallError::Stopped,
        }
    }
}

impl From<WireCallError> for CallError {
    fn from(e: WireCallError) -> Self {
        match e {
            WireCallError::Plugin {
                call,
                message,
                retryable,
                retry_after_ms,
            } => CallError::Plugin {
                call: call_name(&call),
                message,
                retryable,
                retry_after_ms,
            },
            WireCallError::Timeout { call, after_ms } => CallError::Timeout {
                call: call_name(&call),
                after: Duration::from_millis(after_ms),
            },
            WireCallError::Unhealthy => CallError::Unhealthy,
            WireCallError::Expired { call, waited_ms } => CallError::Expired {
                call: call_name(&call),
                waited: Duration::from_millis(waited_ms),
            },
            WireCallError::QueueFull { capacity } => CallError::QueueFull {
                capacity: capacity as usize,
            },
            WireCallError::Stopped => CallError::Stopped,
        }
    }
}

impl From<&StopError> for WireStopError {
    fn from(e: &StopError) -> Self {
        match e {
            StopError::Busy => WireStopError::Busy,
            StopError::StopTimedOut { after } => WireStopError::StopTimedOut {
                after_ms: after.as_millis() as u64,
            },
            _ => WireStopError::AlreadyStopped,
        }
    }
}

impl From<WireStopError> for StopError {
    fn from(e: WireStopError) -> Self {
        match e {
            WireStopError::Busy => StopError::Busy,
            WireStopError::AlreadyStopped => StopError::AlreadyStopped,
            WireStopError::StopTimedOut { after_ms } => StopError::StopTimedOut {
                after: Duration::from_millis(after_ms),
            },
        }
    }
}

impl From<PluginState> for WireState {
    fn from(s: PluginState) -> Self {
        WireState {
            schema: s.schema,
            bytes: s.bytes,
        }
    }
}

impl From<WireState> for PluginState {
    fn from(s: WireState) -> Self {
        PluginState {
            schema: s.schema,
            bytes: s.bytes,
        }
    }
}

impl WireMore {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: MessageKind,
        thread_id: Option<String>,
        target_id: Option<String>,
        emoji: Option<String>,
        remove: bool,
        attachments: Vec<Attachment>,
    ) -> Self {
        WireMore {
            kind,
            thread_id,
            target_id,
            emoji,
            remove,
            attachments: attachments
                .into_iter()
                .map(|a| WireAttachment {
                    name: a.name,
                    mime: a.mime,
                    size: a.size,
                    data: a.data,
                    url: a.url,
                })
                .collect(),
        }
    }

    fn attachments(attachments: Vec<WireAttachment>) -> Vec<Attachment> {
        attachments
            .into_iter()
            .map(|a| Attachment {
                name: a.name,
                mime: a.mime,
                size: a.size,
                data: a.data,
                url: a.url,
            })
            .collect()
    }
}

impl From<&Outbound> for WireOutbound {
    fn from(m: &Outbound) -> Self {
        let m = m.clone();
        WireOutbound {
            chat_id: m.chat_id,
            text: m.text,
            reply_to: m.reply_to,
            metadata_json: serde_json::Value::Object(m.metadata).to_string(),
            more: WireMore::new(
                m.kind,
                m.thread_id,
                m.target_id,
                m.emoji,
                m.remove,
                m.attachments,
            ),
            idempotency_key: m.idempotency_key,
        }
    }
}

impl From<WireOutbound> for Outbound {
    fn from(m: WireOutbound) -> Self {
        Outbound {
            kind: m.more.kind,
            chat_id: m.chat_id,
            text: m.text,
            reply_to: m.reply_to,
            thread_id: m.more.thread_id,
            target_id: m.more.target_id,
            emoji: m.more.emoji,
            remove: m.more.remove,
            attachments: WireMore::attachments(m.more.attachments),
            idempotency_key: m.idempotency_key,
            metadata: json_object(&m.metadata_json),
        }
    }
}

impl From<Inbound> for WireInbound {
    fn from(m: Inbound) -> Self {
        WireInbound {
            chat_id: m.chat_id,
            user: m.user,
            text: m.text,
            message_id: m.message_id,
            timestamp: m.timestamp,
            metadata_json: serde_json::Value::Object(m.metadata).to_string(),
            reply_to: m.reply_to,
            more: WireMore::new(
                m.kind,
                m.thread_id,
                m.target_id,
                m.emoji,
                m.remove,
                m.attachments,
            ),
            generation: m.generation,
        }
    }
}

impl WireInbound {
    /// The host's message, arrived on `platform`.
    pub(crate) fn into_inbound(self, platform: &str) -> Inbound {
        Inbound {
            platform: platform.to_owned(),
            kind: self.more.kind,
            chat_id: self.chat_id,
            user: self.user,
            text: self.text,
            message_id: self.message_id,
            timestamp: self.timestamp,
            reply_to: self.reply_to,
            thread_id: self.more.thread_id,
            target_id: self.more.target_id,
            emoji: self.more.emoji,
            remove: self.more.remove,
            attachments: WireMore::attachments(self.more.attachments),
            metadata: json_object(&self.metadata_json),
            generation: self.generation,
        }
    }
}

impl From<UnloadReport> for WireUnload {
    fn from(r: UnloadReport) -> Self {
        WireUnload {
            shadow_path: r.shadow_path.display().to_string(),
            closed: r.closed,
            unmapped: r.unmapped,
            shadow_deleted: r.shadow_deleted,
            detail: r.detail,
        }
    }
}

impl From<WireUnload> for UnloadReport {
    fn from(r: WireUnload) -> Self {
        UnloadReport {
            shadow_path: r.shadow_path.into(),
            closed: r.closed,
            unmapped: r.unmapped,
            shadow_deleted: r.shadow_deleted,
            detail: r.detail,
        }
    }
}

/// [`Health`] as the wire carries it, and back.
pub(crate) fn health_to_wire(h: Health) -> (u8, String) {
    let status = match h.status {
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy => 2,
    };
    (status, h.detail)
}

/// See [`health_to_wire`].
pub(crate) fn health_from_wire((status, detail): (u8, String)) -> Health {
    Health {
        status: match status {
            0 => HealthStatus::Healthy,
            1 => HealthStatus::Degraded,
            _ => HealthStatus::Unhealthy,
        },
        detail,
    }
}

fn json_object(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}
