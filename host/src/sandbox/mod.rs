//! The sandbox of an isolated platform (`isolation = "process"`): what its child may touch.
//!
//! A plugin in the gateway's process has every right of the gateway's user; a plugin in a child
//! of its own runs, by default, inside what its manifest and the operator grant:
//!
//! - `no_new_privs`, then Landlock (Linux ≥ 5.13; TCP ports from 6.7, scoped signals and
//!   abstract sockets from 6.12): the child reads the system's libraries and certificates, its
//!   library and plugin folder, and what `[sandbox] read` and the config's `path_keys` name; it
//!   reads and writes its data folder (`<state_dir>/data/<id>/`), its own shadow folder, and
//!   what `[sandbox] write` (and the folders of `write_keys`) name; it executes nothing; it
//!   connects over TCP only to `connect_ports` (and the ports of `connect_keys`' addresses) and
//!   binds only `bind_ports` (and `bind_keys`'); it cannot signal processes outside its sandbox.
//! - seccomp: [`enforce::REFUSED_CALLS`] fail with `EPERM` (ptrace, process_vm_*, mount, bpf,
//!   kexec, module loading, perf_event_open, keyctl, userfaultfd).
//! - rlimits: [`OPEN_FILES`] descriptors and [`PROCESSES`] processes beside `memory_limit_mb`.
//!
//! A refusal reaches the plugin as an I/O error (`EACCES`, `EPERM`), never a crash.
//! `sandbox = "strict"` refuses to start a child the kernel cannot sandbox in full;
//! `"best-effort"` (the default: Debian 12's kernel has Landlock without TCP rules) starts it
//! with what the kernel enforces and logs the rest; `"off"` runs it with rlimits only. What is
//! enforced is part of the platform's status ([`Enforced::summary`]).
//!
//! The gateway computes the [`Policy`] ([`grants`]); the child applies it to itself
//! ([`enforce`]) before it opens the library, so the library's constructors already run inside.

pub mod enforce;
pub mod grants;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The most descriptors a sandboxed child may hold (`RLIMIT_NOFILE`).
pub const OPEN_FILES: u64 = 4096;
/// `RLIMIT_NPROC` of a sandboxed child. The kernel counts every thread of the user's processes
/// against it (the gateway's own included) and does not apply it to root; it stops a fork bomb,
/// not a busy plugin.
pub const PROCESSES: u64 = 4096;

/// `sandbox` of a platform's table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Refuse to start a child the kernel cannot sandbox in full.
    Strict,
    /// Start it with what the kernel enforces; log the rest.
    #[default]
    BestEffort,
    /// rlimits only.
    Off,
}

impl Mode {
    /// The name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::BestEffort => "best-effort",
            Mode::Off => "off",
        }
    }
}

/// What one child may touch, computed by the gateway and applied by the child to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How hard to insist.
    pub mode: Mode,
    /// Files and folders it may read (a folder: everything beneath).
    pub read: Vec<PathBuf>,
    /// Files and folders it may read and write.
    pub write: Vec<PathBuf>,
    /// TCP ports it may connect to.
    pub connect_ports: Vec<u16>,
    /// TCP ports it may bind.
    pub bind_ports: Vec<u16>,
}

/// What the child enforced, as it reports it to the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    /// The mode asked for.
    pub mode: Mode,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// The Landlock ABI in force (0: none).
    pub landlock_abi: u32,
    /// Files are confined to the grants.
    pub files: bool,
    /// TCP connect and bind are confined to the granted ports.
    pub tcp: bool,
    /// Signals and abstract sockets are scoped to the sandbox.
    pub scoped: bool,
    /// The seccomp filter is installed.
    pub seccomp: bool,
}

impl Enforced {
    /// One line for status and `plugin info`: what is enforced and, in best-effort, what is not.
    pub fn summary(&self) -> String {
        if self.mode == Mode::Off {
            return "off (sandbox = \"off\": rlimits only)".to_owned();
        }
        let mut on = Vec::new();
        let mut off = Vec::new();
        for (name, yes) in [
            ("no_new_privs", self.no_new_privs),
            ("files", self.files),
            ("tcp ports", self.tcp),
            ("signals", self.scoped),
            ("seccomp", self.seccomp),
        ] {
            if yes {
                on.push(name);
            } else {
                off.push(name);
            }
        }
        let mut line = format!(
            "{} (landlock abi {}): {}",
            self.mode.name(),
            self.landlock_abi,
            on.join(", ")
        );
        if !off.is_empty() {
            line.push_str(&format!("; not enforced: {}", off.join(", ")));
        }
        line
    }
}

/// Status's line for a platform in the gateway's process.
pub const IN_PROCESS: &str = "not sandboxed (in process: every right of the gateway's user)";
