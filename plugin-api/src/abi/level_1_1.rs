//! Level 1.1 of the plugin ABI: messages beyond text, and what the host tells a plugin.
//!
//! A level-1.1 plugin exports, beside its level-1.0 table, [`PluginVTableV1_1`]: a `start`
//! that also receives [`HostV1_1`] and a `send` that takes [`OutboundV1_1`]. Each 1.1 message
//! embeds its level-1.0 form as its first field and appends the rest.
//!
//! What a level-1.1 host does for a level-1.0 plugin, which lacks all of this:
//! - it calls the level-1.0 `start` and `send`;
//! - a message of another kind than `message`, a thread, attachments: refused before the call
//!   (the HTTP API answers 422 naming the plugin's level), or sent as text where the platform's
//!   table sets `fallback = "text"`; the idempotency key is the host's own record only;
//! - a send error has no `retry_after_ms`; a delivery error is plain text;
//! - the plugin gets no data folder and does not know the host's level.
//!
//! Never change anything here once released: a level 1.2 adds its own types.

use std::ffi::c_void;

use abi_stable::{
    StableAbi,
    std_types::{ROption, RResult, RSlice, RStr, RString},
};

use super::{
    HostContext, InboundFfi, InstancePtr, OutboundFfi, ReceiptFfi, SendErrorFfi, StateRef,
};

/// Message kind `message`: a new message.
pub const KIND_MESSAGE: u8 = 0;
/// Message kind `edit`: new text for `target_id`.
pub const KIND_EDIT: u8 = 1;
/// Message kind `delete`: `target_id` is taken back.
pub const KIND_DELETE: u8 = 2;
/// Message kind `reaction`: `emoji` on `target_id` (`remove` takes it back).
pub const KIND_REACTION: u8 = 3;

/// Delivery refused: the instance no longer serves (replaced, stopping, hung); stop delivering.
pub const DELIVER_STALE: u8 = 1;
/// Delivery refused for this message (too large, malformed...); `reason` says why.
pub const DELIVER_REFUSED: u8 = 2;

/// The functions a level-1.1 plugin adds.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginVTableV1_1 {
    /// `start` of level 1.0, which also receives what a level-1.1 host tells its plugins.
    pub start: unsafe extern "C" fn(
        config_json: RStr<'_>,
        host: HostContext,
        host_v1_1: HostV1_1,
        state: ROption<StateRef<'_>>,
    ) -> RResult<InstancePtr, RString>,
    /// Sends one message of any kind.
    pub send: unsafe extern "C" fn(
        instance: InstancePtr,
        message: &OutboundV1_1<'_>,
    ) -> RResult<ReceiptFfi, SendErrorV1_1>,
}

/// What a level-1.1 host lends a starting instance, beside its [`HostContext`].
///
/// Valid, like the context, until the host has unloaded the library.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostV1_1 {
    /// The host's level (1 for 1.1).
    pub level: u32,
    /// A folder that is this platform's own, kept across restarts; empty when there is none.
    pub data_dir: RStr<'static>,
    /// The largest attachment the host hands over or accepts, in bytes.
    pub max_attachment_bytes: u64,
    /// Delivers an inbound message of any kind, with a typed refusal.
    pub deliver: unsafe extern "C" fn(
        ctx: *const c_void,
        generation: u64,
        message: &InboundV1_1<'_>,
    ) -> RResult<(), DeliverErrorFfi>,
}

/// A file carried by a message: its bytes, or a URL where it can be fetched.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct AttachmentFfi<'a> {
    /// The file name.
    pub name: RStr<'a>,
    /// Its MIME type.
    pub mime: RStr<'a>,
    /// Its size in bytes (of `data`, or as announced for `url`).
    pub size: u64,
    /// The bytes; empty when `url` is set.
    pub data: RSlice<'a, u8>,
    /// Where it can be fetched, instead of `data`.
    pub url: ROption<RStr<'a>>,
}

/// What level 1.1 adds to a message, inbound and outbound.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct KindFfi<'a> {
    /// One of the `KIND_*` constants.
    pub kind: u8,
    /// For a reaction: take it back.
    pub remove: bool,
    /// The thread the message belongs to.
    pub thread_id: ROption<RStr<'a>>,
    /// The message an edit, delete or reaction is about.
    pub target_id: ROption<RStr<'a>>,
    /// A reaction's emoji.
    pub emoji: ROption<RStr<'a>>,
    /// Files.
    pub attachments: RSlice<'a, AttachmentFfi<'a>>,
}

/// A message going out through a platform; borrowed from the host.
#[repr(C)]
#[derive(StableAbi)]
pub struct OutboundV1_1<'a> {
    /// Chat, text, reply-to and metadata, as in level 1.0 (`text` is the new text of an edit).
    pub base: OutboundFfi<'a>,
    /// Kind, thread, target, emoji, attachments.
    pub more: KindFfi<'a>,
    /// The client's key for this message: the same key means the same message, resent.
    pub idempotency_key: ROption<RStr<'a>>,
}

/// A message that arrived on a platform; borrowed from the plugin for the callback's duration.
#[repr(C)]
#[derive(StableAbi)]
pub struct InboundV1_1<'a> {
    /// Chat, user, text, message id, time and metadata, as in level 1.0.
    pub base: InboundFfi<'a>,
    /// The id of a message this one answers.
    pub reply_to: ROption<RStr<'a>>,
    /// Kind, thread, target, emoji, attachments.
    pub more: KindFfi<'a>,
}

/// A failed send, with how long to wait before trying again.
#[repr(C)]
#[derive(StableAbi)]
pub struct SendErrorV1_1 {
    /// What went wrong, and whether a retry may succeed.
    pub base: SendErrorFfi,
    /// The platform asked to wait this long before the next send (a rate limit).
    pub retry_after_ms: ROption<u64>,
}

/// A refused delivery.
#[repr(C)]
#[derive(StableAbi)]
pub struct DeliverErrorFfi {
    /// [`DELIVER_STALE`] or [`DELIVER_REFUSED`]; treat other values as refused.
    pub code: u8,
    /// Why, for the log.
    pub reason: RString,
}
