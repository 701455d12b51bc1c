//! The plugin's handle on the host.

use abi_stable::std_types::RStr;

use crate::{
    InboundMessage,
    abi::{HostContext, InboundFfi},
};

/// The host as a plugin instance sees it: deliver inbound messages, write log records.
///
/// Cheap to clone and usable from any thread the plugin runs. Do not use it after
/// [`Plugin::stop`](crate::Plugin::stop) returned: the host ignores such calls, and once the
/// library is unloaded there is no code left to run them.
#[derive(Clone, Copy)]
pub struct Host {
    ctx: HostContext,
}

// SAFETY: the host guarantees that its context is shared-state safe (its callbacks take `&self`
// on a `Sync` value) and stays valid until the library is unloaded, on whatever thread calls it.
unsafe impl Send for Host {}
// SAFETY: as for `Send`: every callback only reads the context through shared references.
unsafe impl Sync for Host {}

impl Host {
    pub(crate) fn new(ctx: HostContext) -> Self {
        Host { ctx }
    }

    /// The generation of this instance (1 for the first load, then one more per reload).
    pub fn generation(&self) -> u64 {
        self.ctx.generation
    }

    /// Hands an inbound message to the host (SSE stream, routes, journal). It returns quickly:
    /// the host queues the message and does not call back into the plugin from here.
    pub fn deliver(&self, message: &InboundMessage) -> Result<(), String> {
        let metadata = serde_json::Value::Object(message.metadata.clone()).to_string();
        let ffi = InboundFfi {
            chat_id: RStr::from_str(&message.chat_id),
            user: RStr::from_str(&message.user),
            text: RStr::from_str(&message.text),
            message_id: RStr::from_str(&message.message_id),
            timestamp_ms: message.timestamp_ms,
            metadata_json: RStr::from_str(&metadata),
        };
        // SAFETY: `ctx` and `deliver` came from the host in `start` and stay valid until the
        // library is unloaded; `ffi` borrows strings that outlive the call.
        let result = unsafe { (self.ctx.deliver)(self.ctx.ctx, self.ctx.generation, &ffi) };
        result.into_result().map_err(|e| e.into_string())
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
