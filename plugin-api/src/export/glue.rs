//! The `extern "C"` functions behind every plugin's vtable, generic over the plugin type.
//!
//! Each body runs inside `catch_unwind`: a panic unwinding across `extern "C"` would abort the
//! host, so it becomes an error value naming the call instead.

use std::{
    any::Any,
    panic::{AssertUnwindSafe, catch_unwind},
};

use abi_stable::{
    StableAbi,
    std_types::{RErr, ROk, ROption, RResult, RStr, RString},
};

use crate::{
    Plugin, State,
    abi::{
        ABI_VERSION, HEALTH_DEGRADED, HEALTH_HEALTHY, HEALTH_UNHEALTHY, HeaderPrefix, HealthFfi,
        HostContext, HostV1_1, InstancePtr, LEVEL, MAGIC, OutboundFfi, OutboundV1_1, PluginHeader,
        PluginVTable, PluginVTableV1_1, ReceiptFfi, SendErrorFfi, SendErrorV1_1, StateFfi,
        StateRef,
    },
    export::{Host, convert},
    log,
    plugin::{HealthStatus, OutboundMessage, SendError, SendReceipt},
};

/// Builds the header of plugin `P`; called by [`export_plugin!`](crate::export_plugin).
pub const fn header<P: Plugin>(plugin_version: &'static str) -> PluginHeader {
    PluginHeader {
        prefix: HeaderPrefix {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            header_size: size_of::<PluginHeader>() as u32,
        },
        vtable_layout: <PluginVTable as StableAbi>::LAYOUT,
        vtable: VTableOf::<P>::VTABLE,
        plugin_version: RStr::from_str(plugin_version),
        level: LEVEL,
        vtable_v1_1_layout: <PluginVTableV1_1 as StableAbi>::LAYOUT,
        vtable_v1_1: VTableOf::<P>::VTABLE_V1_1,
    }
}

struct VTableOf<P>(P);

impl<P: Plugin> VTableOf<P> {
    const VTABLE: &'static PluginVTable = &PluginVTable {
        validate_config: validate_config::<P>,
        start: start::<P>,
        send: send::<P>,
        health: health::<P>,
        export_state: export_state::<P>,
        stop: stop::<P>,
    };

    const VTABLE_V1_1: &'static PluginVTableV1_1 = &PluginVTableV1_1 {
        start: start_v1_1::<P>,
        send: send_v1_1::<P>,
    };
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Replaces the default panic hook of the plugin's own std (once per loaded library).
///
/// The default hook, with `RUST_BACKTRACE` set, symbolises a backtrace by mapping the library
/// file into memory and caching that mapping in a static of the library: after `dlclose` the
/// mapping outlives the code and the host sees the copy still resident. This hook captures no
/// backtrace and writes the panic to the host's log instead of stderr.
fn install_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            log::panic_record(&format!(
                "panicked{location}: {}",
                panic_message(info.payload())
            ));
        }));
    });
}

/// Runs `f`, turning a panic into `Err("plugin panicked in <call>: <message>")`.
fn guarded<R>(call: &str, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    install_panic_hook();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(format!(
            "plugin panicked in {call}: {}",
            panic_message(&*payload)
        )),
    }
}

fn ffi_result<R>(result: Result<R, String>) -> RResult<R, RString> {
    match result {
        Ok(v) => ROk(v),
        Err(e) => RErr(RString::from(e)),
    }
}

fn parse_config<P: Plugin>(config_json: &str) -> Result<P::Config, String> {
    let mut json = serde_json::Deserializer::from_str(config_json);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        // serde_json appends a position in the host-generated JSON text, which means nothing
        // to the user who wrote TOML: keep the part that says what is wrong, and name the key
        // it is about (`burst`, `targets[0].url`).
        let path = e.path().to_string();
        let text = e.into_inner().to_string();
        let text = match text.find(" at line ") {
            Some(cut) => text[..cut].to_owned(),
            None => text,
        };
        if path == "." || text.contains(&format!("`{path}`")) {
            text
        } else {
            format!("key `{path}`: {text}")
        }
    })
}

unsafe extern "C" fn validate_config<P: Plugin>(config_json: RStr<'_>) -> RResult<(), RString> {
    ffi_result(guarded("validate_config", || {
        let config = parse_config::<P>(config_json.as_str())?;
        P::validate_config(&config)
    }))
}

unsafe extern "C" fn start<P: Plugin>(
    config_json: RStr<'_>,
    host: HostContext,
    state: ROption<StateRef<'_>>,
) -> RResult<InstancePtr, RString> {
    start_with::<P>(config_json, Host::new(host, None), state)
}

unsafe extern "C" fn start_v1_1<P: Plugin>(
    config_json: RStr<'_>,
    host: HostContext,
    host_v1_1: HostV1_1,
    state: ROption<StateRef<'_>>,
) -> RResult<InstancePtr, RString> {
    start_with::<P>(config_json, Host::new(host, Some(host_v1_1)), state)
}

fn start_with<P: Plugin>(
    config_json: RStr<'_>,
    host: Host,
    state: ROption<StateRef<'_>>,
) -> RResult<InstancePtr, RString> {
    ffi_result(guarded("start", || {
        let config = parse_config::<P>(config_json.as_str())?;
        P::validate_config(&config)?;
        log::install(host);
        let previous = match state {
            ROption::RSome(state) => Some(State {
                schema: state.schema,
                bytes: state.bytes.to_vec(),
            }),
            ROption::RNone => None,
        };
        let plugin = P::start(config, host, previous)?;
        Ok(InstancePtr(Box::into_raw(Box::new(plugin)).cast()))
    }))
}

/// # Safety
/// `instance` comes from `start::<P>` of this library and has not been stopped.
unsafe fn plugin_ref<'a, P: Plugin>(instance: InstancePtr) -> &'a P {
    // SAFETY: the caller passes a pointer made by `Box::into_raw` in `start::<P>` and not yet
    // freed by `stop::<P>`; the host never calls `stop` while other calls are running.
    unsafe { &*instance.0.cast::<P>() }
}

unsafe extern "C" fn send<P: Plugin>(
    instance: InstancePtr,
    message: &OutboundFfi<'_>,
) -> RResult<ReceiptFfi, SendErrorFfi> {
    // SAFETY: the host passes the pointer its `start` returned, before `stop`.
    let result = unsafe { send_with::<P>(instance, || convert::outbound_v1_0(message)) };
    match result {
        Ok(receipt) => ROk(receipt),
        Err(e) => RErr(SendErrorFfi {
            message: e.message.into(),
            retryable: e.retryable,
        }),
    }
}

unsafe extern "C" fn send_v1_1<P: Plugin>(
    instance: InstancePtr,
    message: &OutboundV1_1<'_>,
) -> RResult<ReceiptFfi, SendErrorV1_1> {
    // SAFETY: the host passes the pointer its `start` returned, before `stop`.
    let result = unsafe { send_with::<P>(instance, || convert::outbound_v1_1(message)) };
    match result {
        Ok(receipt) => ROk(receipt),
        Err(e) => RErr(SendErrorV1_1 {
            base: SendErrorFfi {
                message: e.message.into(),
                retryable: e.retryable,
            },
            retry_after_ms: e.retry_after_ms.into(),
        }),
    }
}

/// # Safety
/// As for [`plugin_ref`].
unsafe fn send_with<P: Plugin>(
    instance: InstancePtr,
    message: impl FnOnce() -> OutboundMessage,
) -> Result<ReceiptFfi, SendError> {
    install_panic_hook();
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as the caller promised.
        let plugin = unsafe { plugin_ref::<P>(instance) };
        plugin.send(message())
    }));
    let result: Result<SendReceipt, SendError> = result.unwrap_or_else(|payload| {
        Err(SendError::permanent(format!(
            "plugin panicked in send: {}",
            panic_message(&*payload)
        )))
    });
    result.map(|receipt| ReceiptFfi {
        message_id: receipt.message_id.into(),
    })
}

unsafe extern "C" fn health<P: Plugin>(instance: InstancePtr) -> RResult<HealthFfi, RString> {
    ffi_result(guarded("health", || {
        // SAFETY: the host passes the pointer its `start` returned, before `stop`.
        let health = unsafe { plugin_ref::<P>(instance) }.health();
        let status = match health.status {
            HealthStatus::Healthy => HEALTH_HEALTHY,
            HealthStatus::Degraded => HEALTH_DEGRADED,
            HealthStatus::Unhealthy => HEALTH_UNHEALTHY,
        };
        Ok(HealthFfi {
            status,
            detail: health.detail.into(),
        })
    }))
}

unsafe extern "C" fn export_state<P: Plugin>(
    instance: InstancePtr,
) -> RResult<ROption<StateFfi>, RString> {
    ffi_result(guarded("export_state", || {
        // SAFETY: the host passes the pointer its `start` returned, before `stop`.
        let state = unsafe { plugin_ref::<P>(instance) }.export_state();
        Ok(state
            .map(|s| StateFfi {
                schema: s.schema,
                bytes: s.bytes.into(),
            })
            .into())
    }))
}

unsafe extern "C" fn stop<P: Plugin>(instance: InstancePtr) -> RResult<(), RString> {
    // SAFETY: the host passes the pointer its `start` returned, once, after every other call on
    // it returned; ownership goes back to a `Box` and ends here.
    let plugin = unsafe { Box::from_raw(instance.0.cast::<P>()) };
    let result = guarded("stop", move || plugin.stop());
    log::uninstall();
    ffi_result(result)
}
