//! The binary contract between the host and a plugin library.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`], an `extern "C" fn() -> *const HeaderPrefix`
//! pointing at its [`PluginHeader`]. The header's first three fields ([`HeaderPrefix`]) never
//! change, so a host can read them from any library, whatever its age, and refuse it before
//! touching the rest.
//!
//! # Levels
//!
//! The ABI major ([`ABI_VERSION`], the manifest's `api`) stays 1; it grows in levels, 1.0, 1.1,
//! ..., by appending only:
//! - each level appends its fields to the end of [`PluginHeader`] (a host tells a level-1.0
//!   header by its size, [`HEADER_SIZE_1_0`], and reads [`PluginHeader::level`] from any later
//!   one);
//! - each level brings its own table of functions and its own message types
//!   ([`level_1_1`]), beside the frozen ones of earlier levels ([`level_1_0`]), which it never
//!   changes;
//! - a host of level 1.N loads every plugin of level 1.0 ... 1.N, checks each table the plugin
//!   has against its own copy of that level's layout, calls the newest table the plugin has,
//!   and falls back as each level documents for what an older plugin lacks;
//! - a plugin of a newer level than the host is refused, naming both levels, before any of its
//!   functions is called.
//!
//! Compatibility is decided by the level, not by this crate's version: the host ignores the
//! package version abi_stable records in every layout, so a plugin built with
//! hermes-plugin-api 0.1 and one built with 0.2 load alike when their levels are supported.
//!
//! Every string or vector that crosses the boundary is an abi_stable type. Borrowed data
//! (`RStr`) stays owned by the side that lends it; owned data (`RString`, `RVec`) returned by a
//! plugin is dropped through the allocator of the library that made it, so the host converts it
//! to std types while the library is still loaded.

use abi_stable::{StableAbi, std_types::RStr, type_layout::TypeLayout};

pub mod level_1_0;
pub mod level_1_1;

pub use level_1_0::*;
pub use level_1_1::*;

/// The first eight bytes of every header: ASCII `HERMESPL`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"HERMESPL");

/// The plugin ABI major version; a plugin's manifest `api` and header must both carry it.
pub const ABI_VERSION: u32 = 1;

/// The level within [`ABI_VERSION`] this crate builds plugins for, and a host built with it
/// speaks up to: 1 for level 1.1.
pub const LEVEL: u32 = 1;

/// The name of the one symbol a plugin library exports.
pub const ENTRY_SYMBOL: &str = "hermes_plugin_entry";

/// The type of the entry symbol.
pub type EntryFn = extern "C" fn() -> *const HeaderPrefix;

/// The size of a level-1.0 header: a header of this size is level 1.0, a larger one says its
/// level in [`PluginHeader::level`].
pub const HEADER_SIZE_1_0: usize = std::mem::offset_of!(PluginHeader, level);

/// `api.level` as people write it: `1.0`, `1.1`.
pub fn level_name(level: u32) -> String {
    format!("{ABI_VERSION}.{level}")
}

/// The part of the header that is the same in every ABI version.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HeaderPrefix {
    /// Always [`MAGIC`].
    pub magic: u64,
    /// The ABI version the plugin was built for.
    pub abi_version: u32,
    /// `size_of::<PluginHeader>()` as the plugin compiled it.
    pub header_size: u32,
}

/// What the entry symbol points at: a `static` inside the plugin library.
///
/// Fields are only ever appended, one group per level; a host reads no further than
/// `prefix.header_size` says the plugin has.
#[repr(C)]
pub struct PluginHeader {
    /// Magic, ABI version and size; read and checked first.
    pub prefix: HeaderPrefix,
    /// The layout of [`PluginVTable`] as compiled into the plugin.
    pub vtable_layout: &'static TypeLayout,
    /// The plugin's level-1.0 functions.
    pub vtable: &'static PluginVTable,
    /// The plugin crate's own version (`CARGO_PKG_VERSION`).
    pub plugin_version: RStr<'static>,
    // Level 1.1 on.
    /// The level the plugin was built for (1 for 1.1).
    pub level: u32,
    /// The layout of [`PluginVTableV1_1`] as compiled into the plugin.
    pub vtable_v1_1_layout: &'static TypeLayout,
    /// The plugin's level-1.1 functions.
    pub vtable_v1_1: &'static PluginVTableV1_1,
}

/// The layout of [`PluginVTable`] as compiled into whoever calls this.
pub fn vtable_layout() -> &'static TypeLayout {
    <PluginVTable as StableAbi>::LAYOUT
}

/// The layout of [`PluginVTableV1_1`] as compiled into whoever calls this.
pub fn vtable_v1_1_layout() -> &'static TypeLayout {
    <PluginVTableV1_1 as StableAbi>::LAYOUT
}
