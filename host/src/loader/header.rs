//! A plugin library's header, read before anything else of it is trusted: magic, ABI version,
//! size, the plugin API level (a newer one refused), and the layout of each table of
//! functions the level has, checked against the host's copy of that level's.

use std::path::Path;

use abi_stable::{
    abi_stability::abi_checking::{
        AbiInstability, CheckingGlobals, check_layout_compatibility_with_globals,
    },
    type_layout::TypeLayout,
};
use hermes_plugin_api::abi::{
    ABI_VERSION, ENTRY_SYMBOL, EntryFn, HEADER_SIZE_1_0, HeaderPrefix, LEVEL, MAGIC, PluginHeader,
    PluginVTable, PluginVTableV1_1, vtable_layout, vtable_v1_1_layout,
};
use libloading::os::unix::Library as DlHandle;

use super::error::LoadError;

/// A library's tables of functions, one per level it has, as raw pointers into it.
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    pub(super) base: *const PluginVTable,
    /// Null below level 1.1.
    pub(super) v1_1: *const PluginVTableV1_1,
    pub(super) level: u32,
}

/// A library's functions, borrowed for as long as it stays loaded: level 1.0's, and those of
/// later levels it has. A call uses the newest table that has it.
#[derive(Clone, Copy)]
pub(crate) struct Fns<'a> {
    pub(crate) base: &'a PluginVTable,
    pub(crate) v1_1: Option<&'a PluginVTableV1_1>,
}

pub(super) fn check(source: &Path, handle: &DlHandle) -> Result<(Tables, String), LoadError> {
    let path = source.to_owned();
    // SAFETY: the symbol is declared with the entry function's type by every plugin built
    // with hermes-plugin-api; a library that exports the name with another type is outside
    // what any check can detect before calling it.
    let entry = unsafe { handle.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
        LoadError::MissingEntry {
            path: path.clone(),
            symbol: ENTRY_SYMBOL,
        }
    })?;
    // The generated entry function returns the address of a static; it runs no plugin
    // code and touches no thread-local, so calling it on this thread pins nothing.
    let prefix_ptr = entry();
    if prefix_ptr.is_null() {
        return Err(LoadError::NullHeader { path });
    }
    // SAFETY: non-null and pointing at the library's header static, whose first fields are
    // the `HeaderPrefix` in every ABI version; read before anything else is trusted.
    let prefix: HeaderPrefix = unsafe { prefix_ptr.read_unaligned() };
    if prefix.magic != MAGIC {
        return Err(LoadError::BadMagic {
            path,
            found: prefix.magic,
        });
    }
    if prefix.abi_version != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            path,
            found: prefix.abi_version,
        });
    }
    let size = prefix.header_size as usize;
    if size < HEADER_SIZE_1_0 {
        return Err(LoadError::HeaderSize {
            path,
            found: prefix.header_size,
            expected: HEADER_SIZE_1_0,
        });
    }
    let header = prefix_ptr.cast::<PluginHeader>();
    // SAFETY: magic, version and size say this is a `PluginHeader` of our ABI version with
    // at least the level-1.0 fields, which come first; it is a static, so aligned. Fields
    // past `header_size` are never read.
    let (vtable_layout_found, base, version) = unsafe {
        (
            (*header).vtable_layout,
            (*header).vtable as *const PluginVTable,
            (*header).plugin_version.as_str().to_owned(),
        )
    };
    let level = if size == HEADER_SIZE_1_0 {
        0
    } else {
        // SAFETY: a larger header has the level field right after the level-1.0 ones
        // (every level appends), within the static.
        unsafe { (*header).level }
    };
    if level > LEVEL {
        return Err(LoadError::NewerLevel { path, level });
    }
    if level >= 1 && size < size_of::<PluginHeader>() {
        return Err(LoadError::HeaderSize {
            path,
            found: prefix.header_size,
            expected: size_of::<PluginHeader>(),
        });
    }
    check_layout(&path, vtable_layout(), vtable_layout_found)?;
    let v1_1 = if level >= 1 {
        // SAFETY: a level-1.1 header is at least `size_of::<PluginHeader>()` (checked).
        let (layout, table) = unsafe { ((*header).vtable_v1_1_layout, (*header).vtable_v1_1) };
        check_layout(&path, vtable_v1_1_layout(), layout)?;
        table as *const PluginVTableV1_1
    } else {
        std::ptr::null()
    };
    Ok((Tables { base, v1_1, level }, version))
}

/// Compares a table's layout in the plugin with the host's copy of that level's, with fresh
/// checking globals (abi_stable's shared ones cache layouts of libraries that may be unloaded
/// by now). The package version abi_stable records does not count: levels decide, so a
/// plugin built with another release of hermes-plugin-api of a supported level loads.
fn check_layout(
    path: &Path,
    expected: &'static TypeLayout,
    found: &'static TypeLayout,
) -> Result<(), LoadError> {
    let globals = CheckingGlobals::new();
    let Err(mut errors) = check_layout_compatibility_with_globals(expected, found, &globals) else {
        return Ok(());
    };
    drop(globals);
    for error in &mut errors.errors {
        error
            .errs
            .retain(|e| !matches!(e, AbiInstability::PackageVersion(_)));
    }
    errors.errors.retain(|e| !e.errs.is_empty());
    if errors.errors.is_empty() {
        return Ok(());
    }
    // The errors point into the library: render them before it can be unloaded.
    Err(LoadError::Layout {
        path: path.to_owned(),
        summary: super::layout::summarize(&errors),
        details: errors.to_string(),
    })
}
