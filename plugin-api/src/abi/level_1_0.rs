//! Level 1.0 of the plugin ABI, frozen: the types as every plugin built for level 1.0 has
//! them (hermes-plugin-api 0.1). Never change a field, a type or an order here: the host
//! checks a level-1.0 library's layouts against these, and a difference refuses every plugin
//! built for that level. Later levels add their own types beside them ([`super::level_1_1`]).

use std::ffi::c_void;

use abi_stable::{
    StableAbi,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
};

/// An opaque pointer to a started plugin instance, owned by the plugin.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct InstancePtr(pub *mut c_void);

/// The functions every plugin exports.
///
/// Each one catches panics and returns them as errors. The instance pointer passed to
/// `send`, `health`, `export_state` and `stop` must come from a successful `start` of the same
/// library and must not be used after `stop`.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginVTable {
    /// Checks a config (JSON text of the `[platforms.<id>]` table) without side effects.
    pub validate_config: unsafe extern "C" fn(config_json: RStr<'_>) -> RResult<(), RString>,
    /// Starts an instance, importing the state a previous generation exported.
    pub start: unsafe extern "C" fn(
        config_json: RStr<'_>,
        host: HostContext,
        state: ROption<StateRef<'_>>,
    ) -> RResult<InstancePtr, RString>,
    /// Sends one message.
    pub send: unsafe extern "C" fn(
        instance: InstancePtr,
        message: &OutboundFfi<'_>,
    ) -> RResult<ReceiptFfi, SendErrorFfi>,
    /// Reports the instance's health.
    pub health: unsafe extern "C" fn(instance: InstancePtr) -> RResult<HealthFfi, RString>,
    /// Exports state for the next generation (`RNone` when the plugin keeps none).
    pub export_state:
        unsafe extern "C" fn(instance: InstancePtr) -> RResult<ROption<StateFfi>, RString>,
    /// Stops the instance, joins every thread it started and frees it.
    pub stop: unsafe extern "C" fn(instance: InstancePtr) -> RResult<(), RString>,
}

/// What the host lends a plugin instance: an opaque context and two callbacks.
///
/// The context is valid until the host has unloaded the library. Calls after the instance's
/// `stop` returned, or from another generation, are ignored by the host.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostContext {
    /// Opaque host state for this instance.
    pub ctx: *const c_void,
    /// The generation of the instance this context belongs to.
    pub generation: u64,
    /// Delivers an inbound message.
    pub deliver: unsafe extern "C" fn(
        ctx: *const c_void,
        generation: u64,
        message: &InboundFfi<'_>,
    ) -> RResult<(), RString>,
    /// Writes a log record; `level` is one of the `LOG_*` constants.
    pub log: unsafe extern "C" fn(
        ctx: *const c_void,
        generation: u64,
        level: u8,
        target: RStr<'_>,
        message: RStr<'_>,
    ),
}

/// Log level `ERROR`.
pub const LOG_ERROR: u8 = 1;
/// Log level `WARN`.
pub const LOG_WARN: u8 = 2;
/// Log level `INFO`.
pub const LOG_INFO: u8 = 3;
/// Log level `DEBUG`.
pub const LOG_DEBUG: u8 = 4;
/// Log level `TRACE`.
pub const LOG_TRACE: u8 = 5;

/// A message going out through a platform; borrowed from the host.
#[repr(C)]
#[derive(StableAbi)]
pub struct OutboundFfi<'a> {
    /// Channel, nick, topic...: the platform's own address.
    pub chat_id: RStr<'a>,
    /// The text.
    pub text: RStr<'a>,
    /// The id of a message this one answers.
    pub reply_to: ROption<RStr<'a>>,
    /// JSON object text; `{}` when empty.
    pub metadata_json: RStr<'a>,
}

/// A message that arrived on a platform; borrowed from the plugin for the callback's duration.
///
/// The host knows which platform the context belongs to and stamps it on the message.
#[repr(C)]
#[derive(StableAbi)]
pub struct InboundFfi<'a> {
    /// Where it arrived.
    pub chat_id: RStr<'a>,
    /// Who sent it.
    pub user: RStr<'a>,
    /// The text.
    pub text: RStr<'a>,
    /// The platform's id for it.
    pub message_id: RStr<'a>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// JSON object text; `{}` when empty.
    pub metadata_json: RStr<'a>,
}

/// A successful send.
#[repr(C)]
#[derive(StableAbi)]
pub struct ReceiptFfi {
    /// The platform's id for the sent message.
    pub message_id: RString,
}

/// A failed send.
#[repr(C)]
#[derive(StableAbi)]
pub struct SendErrorFfi {
    /// What went wrong.
    pub message: RString,
    /// Whether the same send may succeed later.
    pub retryable: bool,
}

/// Health status `healthy`.
pub const HEALTH_HEALTHY: u8 = 0;
/// Health status `degraded`.
pub const HEALTH_DEGRADED: u8 = 1;
/// Health status `unhealthy`.
pub const HEALTH_UNHEALTHY: u8 = 2;

/// An instance's health.
#[repr(C)]
#[derive(StableAbi)]
pub struct HealthFfi {
    /// One of the `HEALTH_*` constants.
    pub status: u8,
    /// Free text, possibly empty.
    pub detail: RString,
}

/// State exported by a plugin (owned by the plugin's allocator).
#[repr(C)]
#[derive(StableAbi)]
pub struct StateFfi {
    /// The plugin's own schema version for `bytes`.
    pub schema: u32,
    /// The state.
    pub bytes: RVec<u8>,
}

/// State lent by the host to a starting instance.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct StateRef<'a> {
    /// The plugin's own schema version for `bytes`.
    pub schema: u32,
    /// The state.
    pub bytes: RSlice<'a, u8>,
}
