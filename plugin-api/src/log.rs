//! Forwards the plugin's own `tracing` events to the host's log.
//!
//! A plugin library has its own copy of `tracing`, so the host's subscriber never sees its
//! events. When an instance starts, the export glue installs a global subscriber in the plugin's
//! copy whose [`HostLayer`] hands every event at `DEBUG` or above to the host, which logs it
//! under the platform's id. A plugin that builds its own subscriber can add [`HostLayer`] to it.

use std::{
    fmt::Write as _,
    sync::{Once, RwLock},
};

use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    Layer, filter::LevelFilter, layer::Context, layer::SubscriberExt, registry::Registry,
};

use crate::{abi, export::Host};

static CURRENT: RwLock<Option<Host>> = RwLock::new(None);
static INSTALL: Once = Once::new();

/// Makes `host` the receiver of forwarded events, installing the global subscriber once.
pub(crate) fn install(host: Host) {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(host);
    INSTALL.call_once(|| {
        let subscriber = Registry::default().with(HostLayer.with_filter(LevelFilter::DEBUG));
        // The plugin may have installed its own subscriber; then it keeps it.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Stops forwarding: after `stop`, the host must not be called any more.
pub(crate) fn uninstall() {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Writes a panic report to the host's log, or to stderr when no instance is running.
pub(crate) fn panic_record(text: &str) {
    match *CURRENT.read().unwrap_or_else(|e| e.into_inner()) {
        Some(host) => host.log(abi::LOG_ERROR, "panic", text),
        None => eprintln!("plugin {text}"),
    }
}

/// A `tracing` layer that writes each event to the host's log.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostLayer;

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(host) = *CURRENT.read().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => abi::LOG_ERROR,
            Level::WARN => abi::LOG_WARN,
            Level::INFO => abi::LOG_INFO,
            Level::DEBUG => abi::LOG_DEBUG,
            Level::TRACE => abi::LOG_TRACE,
        };
        let mut text = TextVisitor::default();
        event.record(&mut text);
        host.log(level, meta.target(), &text.0);
    }
}

/// Renders an event as `message key=value ...`.
#[derive(Default)]
struct TextVisitor(String);

impl tracing::field::Visit for TextVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}
