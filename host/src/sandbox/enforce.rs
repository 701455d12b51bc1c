//! The child's side: applies a [`Policy`] to the calling process, once, on its only thread
//! (Landlock binds the thread that asks and the threads it starts later), before the library
//! is opened.

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use seccompiler::{SeccompAction, SeccompFilter, SeccompRule};

use super::{Enforced, Mode, OPEN_FILES, PROCESSES, Policy};

/// The Landlock ABI the rules are written for: files (with truncate and device ioctls), TCP
/// ports, scoped signals and abstract sockets.
const TARGET: ABI = ABI::V6;

/// System calls a sandboxed child is refused (`EPERM`): inspecting or writing other processes,
/// changing mounts, loading kernel code, the kernel's keyrings, page-fault handlers.
pub const REFUSED_CALLS: [(&str, libc::c_long); 21] = [
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("bpf", libc::SYS_bpf),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
];

/// Applies `policy` to this process. `Err` when `strict` cannot be met (the child then exits
/// and the gateway reports the platform failed, naming why) or a step failed outright.
pub fn apply(policy: &Policy) -> Result<Enforced, String> {
    limit(rustix::process::Resource::Nofile, OPEN_FILES)?;
    limit(rustix::process::Resource::Nproc, PROCESSES)?;
    let mut enforced = Enforced {
        mode: policy.mode,
        ..Enforced::default()
    };
    if policy.mode == Mode::Off {
        return Ok(enforced);
    }
    let strict = policy.mode == Mode::Strict;
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    enforced.no_new_privs = true;
    landlock(policy, strict, &mut enforced)?;
    match seccomp() {
        Ok(()) => enforced.seccomp = true,
        Err(e) if strict => return Err(e),
        Err(e) => tracing::warn!("sandbox: {e}; the seccomp filter is not enforced"),
    }
    Ok(enforced)
}

/// Lowers a limit to `most` (never raises it).
fn limit(resource: rustix::process::Resource, most: u64) -> Result<(), String> {
    let now = rustix::process::getrlimit(resource);
    let cap = |v: Option<u64>| Some(v.map_or(most, |v| v.min(most)));
    rustix::process::setrlimit(
        resource,
        rustix::process::Rlimit {
            current: cap(now.current),
            maximum: cap(now.maximum),
        },
    )
    .map_err(|e| format!("setrlimit {resource:?}: {e}"))
}

fn landlock(policy: &Policy, strict: bool, enforced: &mut Enforced) -> Result<(), String> {
    let failed = |e: landlock::RulesetError| format!("landlock: {e}");
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_all(TARGET) & !AccessFs::Execute;
    let compat = if strict {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let status =
        Ruleset::default()
            .set_compatibility(compat)
            .handle_access(AccessFs::from_all(TARGET))
            .and_then(|r| r.handle_access(AccessNet::from_all(TARGET)))
            .and_then(|r| r.scope(Scope::from_all(TARGET)))
            .and_then(Ruleset::create)
            // A granted path that does not exist is skipped: there is nothing there to reach.
            .and_then(|r| r.add_rules(path_beneath_rules(&policy.read, read)))
            .and_then(|r| r.add_rules(path_beneath_rules(&policy.write, write)))
            .and_then(|r| {
                r.add_rules(policy.connect_ports.iter().map(|&p| {
                    Ok::<_, landlock::RulesetError>(NetPort::new(p, AccessNet::ConnectTcp))
                }))
            })
            .and_then(|r| {
                r.add_rules(
                    policy.bind_ports.iter().map(|&p| {
                        Ok::<_, landlock::RulesetError>(NetPort::new(p, AccessNet::BindTcp))
                    }),
                )
            })
            .and_then(|r| r.restrict_self())
            .map_err(failed)?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as u32,
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => 0,
    };
    let on = status.ruleset != RulesetStatus::NotEnforced;
    enforced.landlock_abi = abi;
    enforced.files = on && abi >= 1;
    enforced.tcp = on && abi >= 4;
    enforced.scoped = on && abi >= 6;
    if status.ruleset != RulesetStatus::FullyEnforced {
        tracing::warn!(
            landlock_abi = abi,
            "sandbox: the kernel enforces only part of the rules ({})",
            enforced.summary()
        );
    }
    Ok(())
}

fn seccomp() -> Result<(), String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let rules = REFUSED_CALLS
        .iter()
        .map(|&(_, call)| (call, Vec::<SeccompRule>::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    let program: seccompiler::BpfProgram =
        filter.try_into().map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| format!("seccomp: {e}"))
}
