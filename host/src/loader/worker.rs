//! Host-owned threads that make every call into a plugin.
//!
//! Rust's std registers thread-local destructors with glibc's `__cxa_thread_atexit_impl`, and
//! glibc will not unmap a library while any are pending. A call made from a long-lived thread
//! (main, a tokio worker) would pin the library for that thread's life. So calls run on
//! threads owned by the instance, which are joined before `dlclose`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{error::CallError, header::Fns, library::LoadedLibrary};

pub(crate) type Job = Box<dyn FnOnce(Fns<'_>) + Send>;

/// A pool of threads serving one instance's calls, in arrival order, from a bounded queue.
pub(crate) struct Workers {
    sender: Mutex<Option<crossbeam_channel::Sender<Job>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Exit notices, one per worker, and how many were received so far.
    exited: Mutex<(mpsc::Receiver<()>, usize)>,
    /// Per worker: when its current call started (ns since `epoch`), 0 while idle.
    busy_since: Arc<[AtomicU64]>,
    epoch: Instant,
}

/// Where a queued call is: a worker takes it (`Running`) or its caller gives up on it
/// (`Cancelled`), whichever comes first; a cancelled call never runs.
pub(crate) struct CallState {
    state: AtomicU8,
    started: std::sync::OnceLock<Instant>,
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;

impl CallState {
    pub(crate) fn new() -> Arc<CallState> {
        Arc::new(CallState {
            state: AtomicU8::new(QUEUED),
            started: std::sync::OnceLock::new(),
        })
    }

    /// The worker's side: `true` if the call is to run (it was not cancelled).
    pub(crate) fn start(&self) -> bool {
        let _ = self.started.set(Instant::now());
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller's side: `true` if the call was still queued and now never runs.
    pub(crate) fn cancel(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// When a worker took the call.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started.get().copied()
    }
}

/// How a pool ended.
pub(crate) enum Drained {
    /// Every worker finished its queue and was joined.
    Joined,
    /// Some worker is still inside a call; the pool was detached.
    Busy,
}

impl Workers {
    pub(crate) fn spawn(
        library: &Arc<LoadedLibrary>,
        generation: u64,
        name: &str,
        count: usize,
        max_queue: usize,
    ) -> std::io::Result<Workers> {
        // A multi-consumer queue: each worker holds its own receiver, no lock between them.
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(max_queue.max(1));
        let (exit_tx, exit_rx) = mpsc::channel();
        let count = count.max(1);
        let epoch = Instant::now();
        let busy_since: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let library = Arc::clone(library);
            let receiver = receiver.clone();
            let exit_tx = exit_tx.clone();
            let busy_since = Arc::clone(&busy_since);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-w{i}"))
                .spawn(move || {
                    if let Some(slot) =
                        &*library.crash_slot.lock().unwrap_or_else(|e| e.into_inner())
                    {
                        slot.enter(generation);
                    }
                    while let Ok(job) = receiver.recv() {
                        // Never 0 while busy, even in the first nanosecond after `epoch`.
                        let now = epoch.elapsed().as_nanos().max(1) as u64;
                        busy_since[i].store(now, Ordering::Release);
                        job(library.vtable());
                        busy_since[i].store(0, Ordering::Release);
                    }
                    drop(library);
                    let _ = exit_tx.send(());
                })?;
            handles.push(handle);
        }
        Ok(Workers {
            sender: Mutex::new(Some(sender)),
            handles: Mutex::new(handles),
            exited: Mutex::new((exit_rx, 0)),
            busy_since,
            epoch,
        })
    }

    /// Queues a job; `Err(Stopped)` once the pool is closed, `Err(QueueFull)` when its queue
    /// is at its bound (the caller is answered at once rather than waiting behind it).
    pub(crate) fn submit(&self, job: Job) -> Result<(), CallError> {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        match sender.as_ref() {
            Some(sender) => sender.try_send(job).map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => CallError::QueueFull {
                    capacity: sender.capacity().unwrap_or(0),
                },
                crossbeam_channel::TrySendError::Disconnected(_) => CallError::Stopped,
            }),
            None => Err(CallError::Stopped),
        }
    }

    /// Whether every worker is inside a call that has run for longer than `timeout`: the
    /// instance can take no call at all.
    pub(crate) fn all_stuck(&self, timeout: Duration) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let limit = timeout.as_nanos() as u64;
        self.busy_since.iter().all(|since| {
            let since = since.load(Ordering::Acquire);
            since != 0 && now.saturating_sub(since) > limit
        })
    }

    /// Closes the queue, lets the workers finish what is queued, and joins them. When they are
    /// not done by `deadline` it gives up and says so; the workers keep their reference to the
    /// library, and a later `drain` can wait for them again.
    pub(crate) fn drain(&self, deadline: Instant) -> Drained {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        while exited.1 < handles.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if exited.0.recv_timeout(left).is_err() {
                return Drained::Busy;
            }
            exited.1 += 1;
        }
        for handle in handles.drain(..) {
            let _ = handle.join();
        }
        exited.1 = 0;
        Drained::Joined
    }
}

/// How long a blocking caller spins for its answer before it sleeps. Waking a sleeping thread
/// costs tens of microseconds on a virtual machine; most calls answer well within this window.
pub(crate) const SPIN: Duration = Duration::from_micros(50);

/// Waits for a call's answer: spins for up to [`SPIN`], then sleeps until `timeout`.
pub(crate) fn await_answer<R>(
    rx: &oneshot::Receiver<R>,
    timeout: Duration,
) -> Result<R, oneshot::RecvTimeoutError> {
    let started = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(r) => return Ok(r),
            Err(oneshot::TryRecvError::Disconnected) => {
                return Err(oneshot::RecvTimeoutError::Disconnected);
            }
            Err(oneshot::TryRecvError::Empty) => {}
        }
        if started.elapsed() >= SPIN {
            return rx.recv_timeout(timeout.saturating_sub(started.elapsed()));
        }
        std::hint::spin_loop();
    }
}

/// Runs one call on a fresh host thread, joined before returning; on timeout the thread is
/// left to finish (holding the library) and the caller gets `Timeout`.
pub(crate) fn run_once<R: Send + 'static>(
    library: &Arc<LoadedLibrary>,
    call: &'static str,
    timeout: Duration,
    f: impl FnOnce(Fns<'_>) -> R + Send + 'static,
) -> Result<R, CallError> {
    let (tx, rx) = oneshot::channel();
    let library = Arc::clone(library);
    let handle = std::thread::Builder::new()
        .name(format!("hermes-{call}"))
        .spawn(move || {
            let result = f(library.vtable());
            drop(library);
            let _ = tx.send(result);
        })
        .map_err(|e| CallError::Plugin {
            call,
            message: format!("cannot start a worker thread: {e}"),
            retryable: true,
            retry_after_ms: None,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => {
            let _ = handle.join();
            Ok(result)
        }
        Err(oneshot::RecvTimeoutError::Timeout) => Err(CallError::Timeout {
            call,
            after: timeout,
        }),
        Err(oneshot::RecvTimeoutError::Disconnected) => {
            let _ = handle.join();
            Err(CallError::Plugin {
                call,
                message: "the worker thread died".into(),
                retryable: false,
                retry_after_ms: None,
            })
        }
    }
}
