//! Forwards the plugin's own `tracing` events to the host's log.
//!
//! A plugin library has its own copy of `tracing`, so the host's subscriber never sees its
//! events. When an instance starts, the export glue installs a global subscriber in the plugin's
//! copy that hands every event at `DEBUG` or above to the host, which logs it under the
//! platform's id. A plugin that builds its own subscriber can add [`HostLayer`] to it.
//!
//! The installed subscriber keeps no span storage: what it allocates can never be freed (a
//! global default lives as long as the process, and the library's code is unmapped long
//! before), so it must be next to nothing. `tracing-subscriber`'s `Registry` allocates 32 KiB
//! of shard table per load, which grew the host by that much at every load and unload.

use std::{
    fmt::Write as _,
    sync::{Once, RwLock},
};

use tracing::{Event, Level, Metadata, Subscriber, field::Field, span};
use tracing_subscriber::{Layer, filter::LevelFilter, layer::Context};

use crate::{abi, export::Host};

static CURRENT: RwLock<Option<Host>> = RwLock::new(None);
static INSTALL: Once = Once::new();

/// Makes `host` the receiver of forwarded events, installing the global subscriber once.
pub(crate) fn install(host: Host) {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(host);
    INSTALL.call_once(|| {
        // The plugin may have installed its own subscriber; then it keeps it.
        let _ = tracing::subscriber::set_global_default(HostSubscriber::default());
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
        forward(event);
    }
}

#[cfg(feature = "testing")]
std::thread_local! {
    /// The testing harness whose call runs on this thread: its events go to that harness, not
    /// to the one started last (tests run in parallel threads of one process). `Host` is
    /// `Copy`, so this has no destructor to register.
    static THREAD_HOST: std::cell::Cell<Option<Host>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the events of this thread going to `host` (the testing harness's calls).
#[cfg(feature = "testing")]
pub(crate) fn on_this_thread<R>(host: Host, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Host>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_HOST.with(|h| h.set(self.0));
        }
    }
    let _restore = Restore(THREAD_HOST.with(|h| h.replace(Some(host))));
    f()
}

/// The host events of this thread go to: the harness whose call runs here (tests), else the
/// running instance's.
fn current() -> Option<Host> {
    #[cfg(feature = "testing")]
    if let Some(host) = THREAD_HOST.with(std::cell::Cell::get) {
        return Some(host);
    }
    *CURRENT.read().unwrap_or_else(|e| e.into_inner())
}

/// Hands `event` to the host, if an instance is running.
fn forward(event: &Event<'_>) {
    let Some(host) = current() else {
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

/// The global subscriber the glue installs: events at `DEBUG` and above go to the host; spans
/// get ids and nothing else.
#[derive(Debug, Default)]
struct HostSubscriber {
    next_span: std::sync::atomic::AtomicU64,
}

impl Subscriber for HostSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::DEBUG
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::DEBUG)
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        let n = self
            .next_span
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        span::Id::from_u64(n + 1)
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        forward(event);
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
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
