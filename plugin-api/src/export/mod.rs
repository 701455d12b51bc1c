//! The export macro and the code it expands to.
//!
//! This module and its children are, with the host's loader, the only places in the workspace
//! allowed `unsafe`: turning the opaque instance pointer back into the plugin's value, calling
//! the host's callbacks, and exporting the entry symbol.

mod convert;
mod glue;
mod host;
#[cfg(feature = "testing")]
pub mod testing;

pub use host::Host;

#[doc(hidden)]
pub use glue::header;

/// Exports a [`Plugin`](crate::Plugin) implementation as the library's entry point.
///
/// Use it once, at the crate root of a `cdylib`:
///
/// ```ignore
/// hermes_plugin_api::export_plugin!(MyPlugin);
/// ```
///
/// The header carries the crate's version (`CARGO_PKG_VERSION`); `version = <const &str>`
/// overrides it:
///
/// ```ignore
/// hermes_plugin_api::export_plugin!(MyPlugin, version = "1.2.3-dev");
/// ```
///
/// The entry function only returns the address of a `static` header: it runs no plugin code,
/// allocates nothing and touches no thread-local, so the host may call it on any thread.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, version = env!("CARGO_PKG_VERSION"));
    };
    ($plugin:ty, version = $version:expr) => {
        /// The entry point hermes-host looks up: returns this plugin's header.
        // SAFETY: the symbol name is the one hermes-host looks up and is defined only here.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn hermes_plugin_entry() -> *const $crate::abi::HeaderPrefix {
            static HEADER: $crate::abi::PluginHeader =
                $crate::__private::header::<$plugin>($version);
            &HEADER.prefix
        }
    };
}
