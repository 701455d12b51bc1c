//! Naming the culprit of a fatal signal: a crash in a plugin's code takes the gateway down (in
//! process, nothing can contain it), but not without one line saying whose code it was.
//!
//! Every library the registry opens gets a slot in a fixed table: the address range its copy
//! is mapped at, and a line naming the platform, the library and its content hash. Worker
//! threads carry the slot of the library they call and the generation they serve. The handler,
//! installed by `serve` for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT, looks the faulting
//! instruction up in the table (or, for an `abort` inside libc, the thread's slot), writes one
//! line to stderr and the same record to `<state_dir>/crash.last`, then hands the signal on
//! (to the handler it replaced, Rust's stack-overflow report, or the default action: the
//! process dies as it would have).
//!
//! Everything the handler does is async-signal-safe: atomic loads from static memory, a
//! formatted line in a stack buffer, `open`, `write`, `close` and `sigaction`. The table is
//! written only outside the handler; a slot is published by its `end` (Release) after its
//! bytes are in place, and emptied by setting `end` to 0 first.

use std::{
    ffi::CString,
    sync::{
        OnceLock,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
};

/// Libraries mapped at once that can be named; more are simply not named.
const SLOTS: usize = 64;
/// The bytes of a slot's description (longer ones are cut).
const TEXT: usize = 480;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    len: AtomicUsize,
    text: [AtomicU8; TEXT],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    text: [const { AtomicU8::new(0) }; TEXT],
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Slot claims: a slot is free when its bit here is clear.
static CLAIMED: [AtomicU8; SLOTS] = [const { AtomicU8::new(0) }; SLOTS];
/// `<state_dir>/crash.last`, as the handler opens it.
static CRASH_FILE: OnceLock<CString> = OnceLock::new();

std::thread_local! {
    /// The slot (plus one) of the library this worker thread calls, and its generation. Plain
    /// `Cell`s with const initialisers: no destructor, readable from a signal handler.
    static THREAD_SLOT: std::cell::Cell<(usize, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A claimed slot; emptied when dropped (the library is unmapped).
#[derive(Debug)]
pub(crate) struct CrashSlot(usize);

impl CrashSlot {
    /// Claims a slot for the copy mapped at `start..end`, described as `text`; `None` when the
    /// table is full.
    pub(crate) fn claim(start: usize, end: usize, text: &str) -> Option<CrashSlot> {
        let index = (0..SLOTS).find(|&i| {
            CLAIMED[i]
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })?;
        let slot = &TABLE[index];
        slot.end.store(0, Ordering::Release);
        let bytes = text.as_bytes();
        let len = bytes.len().min(TEXT);
        for (cell, byte) in slot.text.iter().zip(&bytes[..len]) {
            cell.store(*byte, Ordering::Relaxed);
        }
        slot.len.store(len, Ordering::Relaxed);
        slot.start.store(start, Ordering::Relaxed);
        slot.end.store(end, Ordering::Release);
        Some(CrashSlot(index))
    }

    /// Marks the calling thread as one that calls this library's code for `generation`.
    pub(crate) fn enter(&self, generation: u64) {
        THREAD_SLOT.with(|s| s.set((self.0 + 1, generation)));
    }
}

impl Drop for CrashSlot {
    fn drop(&mut self) {
        TABLE[self.0].end.store(0, Ordering::Release);
        CLAIMED[self.0].store(0, Ordering::Release);
    }
}

/// Which signals are handled, with their names.
const SIGNALS: [(libc::c_int, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGABRT, "SIGABRT"),
];

/// The handlers replaced, called after ours (Rust's stack-overflow report among them).
static PREVIOUS: [AtomicUsize; SIGNALS.len()] = [const { AtomicUsize::new(0) }; SIGNALS.len()];
static PREVIOUS_FLAGS: [AtomicUsize; SIGNALS.len()] =
    [const { AtomicUsize::new(0) }; SIGNALS.len()];

/// Installs the handler (once per process); its record goes to `crash_file` too.
pub fn install(crash_file: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = CString::new(crash_file.as_os_str().as_bytes()) else {
        return;
    };
    if CRASH_FILE.set(path).is_err() {
        return;
    }
    for (i, (signal, _)) in SIGNALS.iter().enumerate() {
        // SAFETY: a zeroed `sigaction` is a valid value to fill in; `handler` has the
        // `SA_SIGINFO` signature; the old action is read into memory we own.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            // SA_RESETHAND: a fault inside this handler meets the default action, never it again.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(*signal, &action, &mut old) == 0 {
                PREVIOUS[i].store(old.sa_sigaction, Ordering::Release);
                PREVIOUS_FLAGS[i].store(old.sa_flags as usize, Ordering::Release);
            }
        }
    }
}

/// A line built in a fixed buffer, without allocating.
struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: u64, base: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(n % base) as usize];
            n /= base;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The instruction address in a signal's context.
///
/// # Safety
/// `context` is the `ucontext_t` the kernel passed to a `SA_SIGINFO` handler.
unsafe fn program_counter(context: *mut libc::c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    let context = context.cast::<libc::ucontext_t>();
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel's context for this thread, valid for the handler's duration.
        unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as usize }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: as above.
        unsafe { (*context).uc_mcontext.pc as usize }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = context;
        0
    }
}

extern "C" fn handler(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let index = SIGNALS.iter().position(|(s, _)| *s == signal).unwrap_or(0);
    // SAFETY: the kernel's context, valid for this call.
    let pc = unsafe { program_counter(context) };
    let by_pc = TABLE.iter().position(|slot| {
        let end = slot.end.load(Ordering::Acquire);
        end != 0 && pc >= slot.start.load(Ordering::Relaxed) && pc < end
    });
    let (thread_slot, generation) = THREAD_SLOT.with(std::cell::Cell::get);
    let culprit = by_pc.or_else(|| thread_slot.checked_sub(1));
    let mut line = Line {
        buf: [0; 1024],
        len: 0,
    };
    line.push(b"hermes-host: fatal signal ");
    line.push(SIGNALS[index].1.as_bytes());
    line.push(b" at pc 0x");
    line.number(pc as u64, 16);
    match culprit {
        Some(i) => {
            let slot = &TABLE[i];
            line.push(if by_pc.is_some() {
                b" in the code of "
            } else {
                b" on a worker thread of "
            });
            let len = slot.len.load(Ordering::Relaxed).min(TEXT);
            let mut text = [0u8; TEXT];
            for (byte, cell) in text.iter_mut().zip(&slot.text[..len]) {
                *byte = cell.load(Ordering::Relaxed);
            }
            line.push(&text[..len]);
            if thread_slot == i + 1 {
                line.push(b" generation=");
                line.number(generation, 10);
            }
        }
        None => line.push(b" outside any plugin's code"),
    }
    line.push(b"\n");
    // SAFETY: `write`, `open` and `close` are async-signal-safe; the buffer and the path are
    // valid for the calls.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        if let Some(path) = CRASH_FILE.get() {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o600,
            );
            if fd >= 0 {
                libc::write(fd, line.buf.as_ptr().cast(), line.len);
                libc::close(fd);
            }
        }
    }
    // Hand the signal on: to the handler replaced, or the default action once we return.
    let previous = PREVIOUS[index].load(Ordering::Acquire);
    let flags = PREVIOUS_FLAGS[index].load(Ordering::Acquire) as libc::c_int;
    if previous != libc::SIG_DFL && previous != libc::SIG_IGN && flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the replaced handler was installed with `SA_SIGINFO`, so it has this
        // signature; it gets the very arguments the kernel gave us.
        let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(previous) };
        previous(signal, info, context);
    }
    // SAFETY: restoring the default action is async-signal-safe; returning re-runs the
    // faulting instruction (or `abort` raises again), and the default action ends the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// What `crash.last` said, read at the next start: the line the handler wrote.
pub fn take_last_crash(crash_file: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(crash_file).ok()?;
    let _ = std::fs::remove_file(crash_file);
    Some(text.trim_end().to_owned()).filter(|t| !t.is_empty())
}
