//! The plugin's handle on the host.

use abi_stable::std_types::RStr;

use crate::{
    DeliverError, InboundMessage,
    abi::{DELIVER_STALE, HostContext, HostV1_1, InboundFfi, InboundV1_1},
    export::convert,
};

/// The host as a plugin instance sees it: deliver inbound messages, write log records.
///
/// Cheap to clone and usable from any thread the plugin runs. Do not use it after
/// [`Plugin::stop`](crate::Plugin::stop) returned: the host ignores such calls, and once the
/// library is unloaded there is no code left to run them.
#[derive(Clone, Copy)]
pub struct Host {
    ctx: HostContext,
    /// What a level-1.1 host adds; `None` from a level-1.0 host.
    v1_1: Option<HostV1_1>,
}

// SAFETY: the host guarantees that its context is shared-state safe (its callbacks take `&self`
// on a `Sync` value) and stays valid until the library is unloaded, on whatever thread calls it.
unsafe impl Send for Host {}
// SAFETY: as for `Send`: every callback only reads the context through shared references.
unsafe impl Sync for Host {}

impl Host {
    pub(crate) fn new(ctx: HostContext, v1_1: Option<HostV1_1>) -> Self {
        Host { ctx, v1_1 }
    }

    /// The host's plugin API level (1 for 1.1; 0 for a level-1.0 host, which does not say).
    pub fn level(&self) -> u32 {
        self.v1_1.map_or(0, |h| h.level)
    }

    /// A folder of this platform's own that survives restarts and upgrades (its state dir's
    /// `data/<id>`), for caches, keys or a sync position; `None` from a host that has none to
    /// give (level 1.0).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        let dir = self.v1_1?.data_dir.as_str();
        (!dir.is_empty()).then(|| std::path::Path::new(dir))
    }

    /// The largest attachment the host accepts or hands over, in bytes (0 from a level-1.0
    /// host, which carries none).
    pub fn max_attachment_bytes(&self) -> u64 {
        self.v1_1.map_or(0, |h| h.max_attachment_bytes)
    }

    /// The generation of this instance (1 for the first load, then one more per reload).
    pub fn generation(&self) -> u64 {
        self.ctx.generation
    }

    /// Hands an inbound message to the host (SSE stream, routes, journal). It returns quickly:
    /// the host queues the message and does not call back into the plugin from here.
    ///
    /// A level-1.0 host receives the text alone: of an edit, delete or reaction, of a reply,
    /// a thread or attachments it learns nothing, and its refusals are all
    /// [`DeliverError::Refused`] (its text says when the instance no longer serves).
    pub fn deliver(&self, message: &InboundMessage) -> Result<(), DeliverError> {
        let metadata = serde_json::Value::Object(message.metadata.clone()).to_string();
        let base = InboundFfi {
            chat_id: RStr::from_str(&message.chat_id),
            user: RStr::from_str(&message.user),
            text: RStr::from_str(&message.text),
            message_id: RStr::from_str(&message.message_id),
            timestamp_ms: message.timestamp_ms,
            metadata_json: RStr::from_str(&metadata),
        };
        let Some(v1_1) = self.v1_1 else {
            // SAFETY: `ctx` and `deliver` came from the host in `start` and stay valid until
            // the library is unloaded; `base` borrows strings that outlive the call.
            let result = unsafe { (self.ctx.deliver)(self.ctx.ctx, self.ctx.generation, &base) };
            return result
                .into_result()
                .map_err(|e| DeliverError::Refused(e.into_string()));
        };
        let attachments: Vec<_> = message
            .attachments
            .iter()
            .map(convert::attachment_to_ffi)
            .collect();
        let ffi = InboundV1_1 {
            base,
            reply_to: message.reply_to.as_deref().map(RStr::from_str).into(),
            more: convert::kind_to_ffi_parts(
                message.kind,
                message.remove,
                message.thread_id.as_deref(),
                message.target_id.as_deref(),
                message.emoji.as_deref(),
                &attachments,
            ),
        };
        // SAFETY: as above, for the level-1.1 callback the same host lent.
        let result = unsafe { (v1_1.deliver)(self.ctx.ctx, self.ctx.generation, &ffi) };
        result.into_result().map_err(|e| match e.code {
            DELIVER_STALE => DeliverError::Stale,
            _ => DeliverError::Refused(e.reason.into_string()),
        })
    }

    /// Writes a log record into the host's log under this platform. `level` is one of
    /// [`abi::LOG_ERROR`](crate::abi::LOG_ERROR) ... [`abi::LOG_TRACE`](crate::abi::LOG_TRACE).
    /// Plugins that use `tracing` need not call this: their events are forwarded already.
    pub fn log(&self, level: u8, target: &str, message: &str) {
        // SAFETY: as in `deliver`; the strings are borrowed for the call only.
        unsafe {
            (self.ctx.log)(
                self.ctx.ctx,
                self.ctx.generation,
                level,
                RStr::from_str(target),
                RStr::from_str(message),
            );
        }
    }
}
