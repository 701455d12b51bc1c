//! The host's side of the callbacks a plugin instance may call: deliver and log.
//!
//! A plugin gets a [`HostContext`] whose `ctx` points at a [`CallbackContext`]. The library
//! that lent it keeps the context alive until after `dlclose`, so a plugin thread can never
//! call through a dangling pointer while the library's code still exists. Calls from an
//! instance that was stopped, or carrying another generation, are refused.

use std::{
    ffi::c_void,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};
use hermes_plugin_api::abi::{
    DELIVER_REFUSED, DELIVER_STALE, DeliverErrorFfi, HostContext, HostV1_1, InboundFfi,
    InboundV1_1, LEVEL, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_TRACE, LOG_WARN,
};

use crate::message::{Attachment, Inbound, MessageKind, limits};

/// Where a running instance's inbound messages and log records go.
pub trait EventSink: Send + Sync + 'static {
    /// An inbound message; must return quickly (queue it, do not call the plugin). An `Err`
    /// reaches the plugin as its `deliver`'s error: the message was not accepted.
    fn inbound(&self, message: Inbound) -> Result<(), String>;

    /// A delivery from an instance that no longer serves (replaced, stopping, hung) was
    /// refused; counted by the gateway.
    fn stale_delivery(&self, _platform: &str, _generation: u64) {}

    /// The process of an isolated instance died without being asked to (a signal, an exit,
    /// a kill for a hung call); `exit` says how. Counted by the gateway, whose supervisor
    /// restarts the platform.
    fn crashed(&self, _platform: &str, _generation: u64, _exit: &str) {}

    /// A log record written by the plugin; by default logged through `tracing` under the
    /// `plugin` target with the platform id.
    fn log(&self, platform: &str, generation: u64, level: u8, target: &str, message: &str) {
        forward_log(platform, generation, level, target, message);
    }
}

/// A sink that drops inbound messages and logs plugin records: for checks and tools.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardInbound;

impl EventSink for DiscardInbound {
    fn inbound(&self, _message: Inbound) -> Result<(), String> {
        Ok(())
    }
}

/// `text` with its control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`...): what a plugin
/// writes becomes one record of the gateway's log, never a forged line or a terminal escape.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out.into()
}

/// Writes a plugin's log record as a host `tracing` event (control characters escaped).
pub fn forward_log(platform: &str, generation: u64, level: u8, target: &str, message: &str) {
    let target = &*escape_controls(target);
    let message = &*escape_controls(message);
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: "plugin",
                $level,
                platform,
                generation,
                plugin_target = target,
                "{message}"
            )
        };
    }
    match level {
        LOG_ERROR => emit!(tracing::Level::ERROR),
        LOG_WARN => emit!(tracing::Level::WARN),
        LOG_INFO => emit!(tracing::Level::INFO),
        LOG_DEBUG => emit!(tracing::Level::DEBUG),
        LOG_TRACE => emit!(tracing::Level::TRACE),
        _ => emit!(tracing::Level::INFO),
    }
}

/// What `HostContext::ctx` points at.
pub(crate) struct CallbackContext {
    platform: String,
    generation: u64,
    /// Calls are accepted (until the instance's `stop` returned).
    active: AtomicBool,
    /// Deliveries are accepted (until the instance stops serving: replaced, stopping, hung).
    serving: AtomicBool,
    sink: Arc<dyn EventSink>,
    /// Lent to a level-1.1 plugin as `data_dir` (empty: none); never changes.
    data_dir: String,
    max_attachment_bytes: u64,
}

impl CallbackContext {
    pub(crate) fn new(
        platform: &str,
        generation: u64,
        sink: Arc<dyn EventSink>,
        data_dir: Option<&std::path::Path>,
        max_attachment_bytes: u64,
    ) -> Arc<Self> {
        Arc::new(CallbackContext {
            platform: platform.to_owned(),
            generation,
            active: AtomicBool::new(true),
            serving: AtomicBool::new(true),
            sink,
            data_dir: data_dir
                .and_then(|d| d.to_str())
                .unwrap_or_default()
                .to_owned(),
            max_attachment_bytes,
        })
    }

    /// From now on, deliveries through this context are refused (log records still pass, so
    /// what a plugin logs while it stops reaches the host's log).
    pub(crate) fn retire(&self) {
        self.serving.store(false, Ordering::Release);
    }

    /// From now on, calls through this context are refused.
    pub(crate) fn deactivate(&self) {
        self.retire();
        self.active.store(false, Ordering::Release);
    }

    /// The context handed to the plugin. `self` must outlive the library (the library keeps it).
    pub(crate) fn host_context(self: &Arc<Self>) -> HostContext {
        HostContext {
            ctx: Arc::as_ptr(self).cast(),
            generation: self.generation,
            deliver,
            log,
        }
    }

    /// What a level-1.1 plugin gets beside [`Self::host_context`]; valid as long.
    pub(crate) fn host_v1_1(self: &Arc<Self>) -> HostV1_1 {
        // SAFETY: only the lifetime is widened: the string lives in this context, which the
        // library keeps until after `dlclose`, and is never changed, so no code of the plugin
        // can see it freed or moved.
        let data_dir: &'static str = unsafe { &*std::ptr::from_ref::<str>(self.data_dir.as_str()) };
        HostV1_1 {
            level: LEVEL,
            data_dir: RStr::from_str(data_dir),
            max_attachment_bytes: self.max_attachment_bytes,
            deliver: deliver_v1_1,
        }
    }

    fn accepts(&self, generation: u64) -> bool {
        self.active.load(Ordering::Acquire) && generation == self.generation
    }
}

/// # Safety
/// `ctx` is the pointer from [`CallbackContext::host_context`], still owned by its library.
unsafe fn context<'a>(ctx: *const c_void) -> &'a CallbackContext {
    // SAFETY: the caller passes the pointer `host_context` made from an `Arc` that the loaded
    // library holds until after `dlclose`; no code of the library can run after that.
    unsafe { &*ctx.cast::<CallbackContext>() }
}

/// Why a delivery was not taken.
struct Refusal {
    /// The instance no longer serves.
    stale: bool,
    reason: String,
}

fn refused(reason: String) -> Refusal {
    Refusal {
        stale: false,
        reason,
    }
}

unsafe extern "C" fn deliver(
    ctx: *const c_void,
    generation: u64,
    message: &InboundFfi<'_>,
) -> RResult<(), RString> {
    // SAFETY: plugins call back with the `ctx` they were lent in `start`.
    match unsafe { take(ctx, generation, message, None) } {
        Ok(()) => ROk(()),
        Err(refusal) => RErr(refusal.reason.into()),
    }
}

unsafe extern "C" fn deliver_v1_1(
    ctx: *const c_void,
    generation: u64,
    message: &InboundV1_1<'_>,
) -> RResult<(), DeliverErrorFfi> {
    // SAFETY: plugins call back with the `ctx` they were lent in `start`.
    match unsafe { take(ctx, generation, &message.base, Some(message)) } {
        Ok(()) => ROk(()),
        Err(refusal) => RErr(DeliverErrorFfi {
            code: if refusal.stale {
                DELIVER_STALE
            } else {
                DELIVER_REFUSED
            },
            reason: refusal.reason.into(),
        }),
    }
}

/// Checks a delivery against the instance's state and the host's caps and hands it to the
/// sink; `v1_1` is the whole message when the plugin is of level 1.1.
///
/// # Safety
/// `ctx` is the pointer from [`CallbackContext::host_context`], still owned by its library.
unsafe fn take(
    ctx: *const c_void,
    generation: u64,
    message: &InboundFfi<'_>,
    v1_1: Option<&InboundV1_1<'_>>,
) -> Result<(), Refusal> {
    // A panic must not unwind into the plugin's frames: catch it and answer an error.
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as the caller promised.
        let ctx = unsafe { context(ctx) };
        if !ctx.accepts(generation) || !ctx.serving.load(Ordering::Acquire) {
            ctx.sink.stale_delivery(&ctx.platform, generation);
            return Err(Refusal {
                stale: true,
                reason: format!(
                    "{} generation {generation} no longer serves; message not accepted",
                    ctx.platform
                ),
            });
        }
        let more = v1_1.map(|m| &m.more);
        let reply_to = v1_1.and_then(|m| m.reply_to.into_option());
        let thread_id = more.and_then(|m| m.thread_id.into_option());
        let target_id = more.and_then(|m| m.target_id.into_option());
        let emoji = more.and_then(|m| m.emoji.into_option());
        for (field, value, max) in [
            (
                "chat_id",
                message.chat_id.as_str(),
                limits::INBOUND_FIELD_BYTES,
            ),
            ("user", message.user.as_str(), limits::INBOUND_FIELD_BYTES),
            (
                "message_id",
                message.message_id.as_str(),
                limits::INBOUND_FIELD_BYTES,
            ),
            ("text", message.text.as_str(), limits::INBOUND_TEXT_BYTES),
            (
                "metadata",
                message.metadata_json.as_str(),
                limits::METADATA_BYTES,
            ),
            (
                "reply_to",
                reply_to.map_or("", |s| s.as_str()),
                limits::INBOUND_FIELD_BYTES,
            ),
            (
                "thread_id",
                thread_id.map_or("", |s| s.as_str()),
                limits::INBOUND_FIELD_BYTES,
            ),
            (
                "target_id",
                target_id.map_or("", |s| s.as_str()),
                limits::INBOUND_FIELD_BYTES,
            ),
            (
                "emoji",
                emoji.map_or("", |s| s.as_str()),
                limits::INBOUND_FIELD_BYTES,
            ),
        ] {
            if value.len() > max {
                return Err(refused(format!(
                    "{}: inbound `{field}` of {} bytes is over the host's limit of {max}; message not accepted",
                    ctx.platform,
                    value.len()
                )));
            }
        }
        let attachments = match more {
            Some(more) => attachments(ctx, more.attachments.as_slice())?,
            None => Vec::new(),
        };
        let kind = more.map_or(MessageKind::Message, |m| MessageKind::from_ffi(m.kind));
        let metadata = match serde_json::from_str(message.metadata_json.as_str()) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let owned = |s: Option<RStr<'_>>| s.map(|s| s.as_str().to_owned());
        ctx.sink
            .inbound(Inbound {
                platform: ctx.platform.clone(),
                kind,
                chat_id: message.chat_id.as_str().to_owned(),
                user: message.user.as_str().to_owned(),
                text: message.text.as_str().to_owned(),
                message_id: message.message_id.as_str().to_owned(),
                timestamp: message.timestamp_ms,
                reply_to: owned(reply_to),
                thread_id: owned(thread_id),
                target_id: owned(target_id),
                emoji: owned(emoji),
                remove: more.is_some_and(|m| m.remove),
                attachments,
                metadata,
                generation,
            })
            .map_err(refused)
    }));
    result.unwrap_or_else(|_| Err(refused("the host failed to take the message".into())))
}

/// A delivery's attachments as the host's, within its caps (count, bytes, field lengths).
fn attachments(
    ctx: &CallbackContext,
    given: &[hermes_plugin_api::abi::AttachmentFfi<'_>],
) -> Result<Vec<Attachment>, Refusal> {
    if given.len() > limits::ATTACHMENTS {
        return Err(refused(format!(
            "{}: {} attachments; the host takes at most {}",
            ctx.platform,
            given.len(),
            limits::ATTACHMENTS
        )));
    }
    given
        .iter()
        .map(|a| {
            let url = a.url.into_option().map(|u| u.as_str().to_owned());
            let long = [
                a.name.as_str(),
                a.mime.as_str(),
                url.as_deref().unwrap_or(""),
            ]
            .iter()
            .any(|f| f.len() > limits::INBOUND_FIELD_BYTES);
            if long {
                return Err(refused(format!(
                    "{}: an attachment's name, type or URL is over {} bytes",
                    ctx.platform,
                    limits::INBOUND_FIELD_BYTES
                )));
            }
            if a.data.len() as u64 > ctx.max_attachment_bytes {
                return Err(refused(format!(
                    "{}: attachment `{}` of {} bytes is over the host's limit of {}",
                    ctx.platform,
                    a.name.as_str(),
                    a.data.len(),
                    ctx.max_attachment_bytes
                )));
            }
            Ok(Attachment {
                name: a.name.as_str().to_owned(),
                mime: a.mime.as_str().to_owned(),
                size: if a.data.is_empty() {
                    a.size
                } else {
                    a.data.len() as u64
                },
                data: a.data.to_vec(),
                url,
            })
        })
        .collect()
}

unsafe extern "C" fn log(
    ctx: *const c_void,
    generation: u64,
    level: u8,
    target: RStr<'_>,
    message: RStr<'_>,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: plugins call back with the `ctx` they were lent in `start`.
        let ctx = unsafe { context(ctx) };
        if ctx.accepts(generation) {
            ctx.sink.log(
                &ctx.platform,
                generation,
                level,
                target.as_str(),
                message.as_str(),
            );
        }
    }));
}
