//! Loading, calling and unloading plugin libraries: the only module of the host with `unsafe`.
//!
//! The invariants, each measured on Linux/glibc (ARCHITECTURE.md, "Invariants", says why):
//! 1. Every load reads a fresh shadow copy ([`Library::open`]), opened `RTLD_NOW | RTLD_LOCAL`,
//!    checked (ELF bounds, magic, ABI version, header size, vtable layout with fresh
//!    `CheckingGlobals`) before any plugin function is called.
//! 2. Every call into a plugin runs on a host thread owned by the instance ([`Instance`]'s
//!    workers) or made for that one call, and joined before `dlclose`.
//! 3. Unload order: refuse new calls, drain and join the workers, `stop` (the plugin joins its
//!    threads) on a joined host thread, drop everything the plugin allocated, `dlclose`, delete
//!    the copy ([`Instance::stop`] then [`Library::unload`]).
//! 4. After `dlclose`, `/proc/self/maps` says whether the copy is really gone
//!    ([`UnloadReport::unmapped`]).
//!
//! A call that never returns keeps the library mapped: its thread holds a reference, and
//! `unload` refuses to close a library anyone still holds.

mod callbacks;
mod elf;
mod error;
pub mod fatal;
mod header;
mod instance;
mod jobs;
mod layout;
mod library;
mod maps;
mod shadow;
mod start;
mod worker;

pub use callbacks::{DiscardInbound, EventSink, escape_controls, forward_log};
pub use error::{CallError, LoadError, StopError};
pub use instance::{Instance, Stopped};
pub use library::{Library, UnloadReport};
pub use maps::{is_mapped, mapped_files, mapped_under};
pub use shadow::ShadowDir;
pub use start::{StartFailure, StartOptions};
pub(crate) use worker::await_answer;

/// Whether `path` is a complete shared object: an ELF file whose every segment lies inside it
/// (a file still being written, or cut short, is not). Reads headers only; maps nothing.
pub fn is_complete_shared_object(path: &std::path::Path) -> bool {
    matches!(elf::check_shared_object(path), Ok(Ok(())))
}
