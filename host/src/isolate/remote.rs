//! The gateway's side of an isolated platform: a child process holding the library
//! ([`RemoteLibrary`]), and the instance started in it ([`RemoteInstance`]). They mirror the
//! loader's `Library` and `Instance`, so the registry's transactions (load, reload, unload) run
//! the same steps on either.
//!
//! Each child has two threads here: a reader, which routes replies to their callers and the
//! plugin's deliveries and logs to the sink, and a waiter, which reaps the child
//! (`Child::wait`, no polling) and then fails every call in flight with the signal or exit code.
//! A death the gateway did not ask for is a crash, reported to the sink; signals go through a
//! pidfd, so a reaped child's pid, reused by another process, is never signalled.

use std::{
    collections::HashMap,
    io::Write,
    os::{
        fd::{AsFd, OwnedFd},
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::wire::{self, Call, FrameReader, FromChild, Reply, StartCall, ToChild};
use crate::{
    loader::{CallError, EventSink, StartOptions, StopError, UnloadReport},
    message::{Health, Outbound, PluginState, Receipt},
};

/// How long the child may take to open the library (a constructor that hangs is killed).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unload may take before the child is killed.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a child for a platform.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The `hermes-host` binary.
    pub program: PathBuf,
    /// The platform id.
    pub platform: String,
    /// The child's whole environment.
    pub env: Vec<(String, String)>,
    /// `memory_limit_mb`: the child's address-space limit.
    pub memory_limit_mb: Option<u64>,
}

/// One child process and its connection.
struct Conn {
    platform: String,
    pid: u32,
    pidfd: OwnedFd,
    writer: Mutex<UnixStream>,
    /// Calls waiting for their reply, by request id; emptied when the child is gone.
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    /// Why the child is gone, once it is (set under `pending`'s lock).
    exit: Mutex<Option<String>>,
    exited: Condvar,
    /// The gateway asked the child to go (an unload): its end is no crash.
    expected: AtomicBool,
    /// Why the gateway killed it, for the exit's description.
    killed_for: Mutex<Option<String>>,
    sink: Arc<dyn EventSink>,
    /// The generation started in the child, and whether its deliveries are taken.
    generation: AtomicU64,
    serving: AtomicBool,
}

impl Conn {
    fn spawn(spawn: &Spawn, sink: Arc<dyn EventSink>) -> std::io::Result<Arc<Conn>> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut command = Command::new(&spawn.program);
        command
            .arg("__isolate")
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--platform")
            .arg(&spawn.platform);
        if let Some(mb) = spawn.memory_limit_mb {
            command.arg("--memory-limit-mb").arg(mb.to_string());
        }
        // What the plugin prints goes to the gateway's stderr, never into its stdout.
        let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
        command
            .env_clear()
            .envs(spawn.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(stderr))
            .stderr(Stdio::inherit());
        let mut child = spawner::spawn(command)?;
        let pid = child.id();
        let pidfd = match rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| std::io::Error::other("child without a pid"))
            .and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                    .map_err(Into::into)
            }) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let reader = ours.try_clone()?;
        let conn = Arc::new(Conn {
            platform: spawn.platform.clone(),
            pid,
            pidfd,
            writer: Mutex::new(ours),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            expected: AtomicBool::new(false),
            killed_for: Mutex::new(None),
            sink,
            generation: AtomicU64::new(0),
            serving: AtomicBool::new(false),
        });
        let name = format!("hermes-{}-c{pid}", spawn.platform);
        let for_reader = Arc::clone(&conn);
        std::thread::Builder::new()
            .name(format!("{name}-read"))
            .spawn(move || for_reader.read(reader))?;
        let for_waiter = Arc::clone(&conn);
        std::thread::Builder::new()
            .name(format!("{name}-wait"))
            .spawn(move || for_waiter.wait(child))?;
        Ok(conn)
    }

    /// The reader thread: replies to callers, deliveries and logs to the sink.
    fn read(self: Arc<Self>, stream: UnixStream) {
        let mut frames = FrameReader::new(stream);
        loop {
            match frames.read_frame::<FromChild>() {
                Ok(Some(FromChild::Reply { id, reply })) => {
                    let waiting = self.lock_pending().remove(&id);
                    if let Some(tx) = waiting {
                        let _ = tx.send(reply);
                    }
                }
                Ok(Some(FromChild::Deliver { id, message })) => {
                    let result = if self.serving.load(Ordering::Acquire)
                        && message.generation == self.generation.load(Ordering::Acquire)
                    {
                        self.sink.inbound(message.into_inbound(&self.platform))
                    } else {
                        self.sink.stale_delivery(&self.platform, message.generation);
                        Err(format!(
                            "{} generation {} no longer serves; message not accepted",
                            self.platform, message.generation
                        ))
                    };
                    let _ = self.write(&ToChild::Delivered { id, result });
                }
                Ok(Some(FromChild::Log {
                    generation,
                    level,
                    target,
                    message,
                })) => self
                    .sink
                    .log(&self.platform, generation, level, &target, &message),
                Ok(None) => return,
                Err(e) => {
                    // A frame the gateway cannot read: the child is no longer trusted.
                    self.kill(&format!("it sent a frame the gateway cannot read ({e})"));
                    return;
                }
            }
        }
    }

    /// The waiter thread: reaps the child, fails the calls in flight, reports a crash.
    fn wait(self: Arc<Self>, mut child: std::process::Child) {
        let status = child.wait();
        let killed_for = self
            .killed_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let how = match &status {
            Ok(s) => match (s.signal(), s.code()) {
                (Some(signal), _) => {
                    format!("was killed by {}", crate::probe::signal_name(signal))
                }
                (None, Some(code)) => format!("exited with code {code}"),
                (None, None) => "ended".to_owned(),
            },
            Err(e) => format!("could not be waited for: {e}"),
        };
        let exit = match killed_for {
            Some(why) => format!("{how}: the gateway killed it because {why}"),
            None => how,
        };
        {
            let mut pending = self.lock_pending();
            *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit.clone());
            // Dropping the senders fails every call in flight with the exit.
            pending.clear();
        }
        self.exited.notify_all();
        if !self.expected.load(Ordering::Acquire) {
            let generation = self.generation.load(Ordering::Acquire);
            tracing::error!(platform = %self.platform, generation, pid = self.pid, "the plugin's process {exit}");
            self.sink.crashed(&self.platform, generation, &exit);
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the child is gone, if it is.
    fn exit(&self) -> Option<String> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn crashed_error(&self) -> CallError {
        CallError::Crashed {
            exit: self
                .exit()
                .unwrap_or_else(|| "closed its connection".to_owned()),
        }
    }

    fn write(&self, frame: &ToChild) -> std::io::Result<()> {
        let bytes = wire::encode(frame)?;
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&bytes)
    }

    /// Sends a call; its reply comes through the receiver.
    fn request(&self, call: Call) -> Result<oneshot::Receiver<Reply>, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if self.exit().is_some() {
                return Err(self.crashed_error());
            }
            pending.insert(id, tx);
        }
        if self.write(&ToChild::Call { id, call }).is_err() {
            self.lock_pending().remove(&id);
            return Err(self.crashed_error());
        }
        Ok(rx)
    }

    /// A call, waiting on this thread up to `within`; past that the child is killed.
    fn call_blocking(
        &self,
        name: &'static str,
        call: Call,
        within: Duration,
    ) -> Result<Reply, CallError> {
        let rx = self.request(call)?;
        match rx.recv_timeout(within) {
            Ok(reply) => Ok(reply),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(self.crashed_error()),
            Err(oneshot::RecvTimeoutError::Timeout) => Err(self.hung(name, within)),
        }
    }

    /// A call, awaited up to `within`; past that the child is killed.
    async fn call_async(
        &self,
        name: &'static str,
        call: Call,
        within: Duration,
    ) -> Result<Reply, CallError> {
        let rx = self.request(call)?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.crashed_error()),
            Err(_) => Err(self.hung(name, within)),
        }
    }

    /// A call did not return in time: the child is killed, so no hung generation lingers.
    fn hung(&self, call: &'static str, after: Duration) -> CallError {
        self.kill(&format!(
            "its {call} call was not answered within {} ms (twice call_timeout_ms: its wait in the queue and its run)",
            after.as_millis()
        ));
        CallError::Timeout { call, after }
    }

    /// Kills the child (through its pidfd), recording why.
    fn kill(&self, why: &str) {
        if self.exit().is_some() {
            return;
        }
        self.killed_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| why.to_owned());
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
    }

    /// Waits up to `within` for the child to be gone.
    fn wait_exit(&self, within: Duration) -> Option<String> {
        let guard = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .exited
            .wait_timeout_while(guard, within, |exit| exit.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }

    /// Ends the child without reporting a crash: asked to unload, killed if it does not.
    fn finish(&self) -> UnloadReport {
        self.expected.store(true, Ordering::Release);
        self.serving.store(false, Ordering::Release);
        let report = match self.call_blocking("unload", Call::Unload, UNLOAD_TIMEOUT) {
            Ok(Reply::Unloaded(report)) => Some(UnloadReport::from(report)),
            _ => None,
        };
        if self.wait_exit(Duration::from_secs(2)).is_none() {
            self.kill("it did not exit after its unload");
            self.wait_exit(Duration::from_secs(5));
        }
        let gone = self.exit().is_some();
        let mut report = report.unwrap_or(UnloadReport {
            shadow_path: PathBuf::new(),
            closed: false,
            unmapped: None,
            shadow_deleted: false,
            detail: Some("the child did not unload its library; it was killed".to_owned()),
        });
        // The child's whole address space is gone with it.
        if gone {
            report.unmapped = Some(true);
        }
        report
    }
}

/// A library opened in a child process.
pub struct RemoteLibrary {
    conn: Arc<Conn>,
    version: String,
    source: PathBuf,
}

/// Why a child could not open a library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("isolated child for `{platform}`: {message}")]
pub struct ChildError {
    /// The platform.
    pub platform: String,
    /// What went wrong: the loader's error, or how the child died.
    pub message: String,
}

impl RemoteLibrary {
    /// Starts a child and has it open `path` (its shadow copy under `shadow_root`).
    pub fn open(
        spawn: &Spawn,
        sink: Arc<dyn EventSink>,
        path: &Path,
        shadow_root: &Path,
    ) -> Result<RemoteLibrary, ChildError> {
        let error = |message: String| ChildError {
            platform: spawn.platform.clone(),
            message,
        };
        let conn = Conn::spawn(spawn, sink).map_err(|e| {
            error(format!(
                "cannot start {} __isolate: {e}",
                spawn.program.display()
            ))
        })?;
        let opened = conn.call_blocking(
            "open",
            Call::Open {
                path: path.display().to_string(),
                shadow_dir: shadow_root.display().to_string(),
            },
            OPEN_TIMEOUT,
        );
        let failed = |message: String| {
            conn.finish();
            Err(error(message))
        };
        match opened {
            Ok(Reply::Opened(Ok(version))) => Ok(RemoteLibrary {
                conn,
                version,
                source: path.to_owned(),
            }),
            Ok(Reply::Opened(Err(message))) => failed(message),
            Ok(other) => failed(format!("unexpected reply {other:?}")),
            Err(CallError::Crashed { exit }) => Err(error(format!(
                "the child {exit} while loading {}",
                path.display()
            ))),
            Err(e) => failed(e.to_string()),
        }
    }

    /// The library's own version.
    pub fn plugin_version(&self) -> &str {
        &self.version
    }

    /// The library file it was opened from.
    pub fn source_path(&self) -> &Path {
        &self.source
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.conn.pid
    }

    /// The plugin's `validate_config`, in the child.
    pub fn validate_config(&self, config_json: &str, timeout: Duration) -> Result<(), CallError> {
        let call = Call::ValidateConfig {
            config_json: config_json.to_owned(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self
            .conn
            .call_blocking("validate_config", call, grace(timeout))?
        {
            Reply::Done(result) => result.map_err(Into::into),
            other => Err(unexpected("validate_config", &other)),
        }
    }

    /// Starts an instance in the child. On failure the library comes back, still open.
    pub fn start(
        self,
        options: StartOptions,
    ) -> Result<RemoteInstance, (CallError, RemoteLibrary)> {
        self.conn
            .generation
            .store(options.generation, Ordering::Release);
        self.conn.serving.store(true, Ordering::Release);
        let call = Call::Start(StartCall {
            platform: options.platform,
            generation: options.generation,
            config_json: options.config_json,
            workers: options.workers as u32,
            call_timeout_ms: options.call_timeout.as_millis() as u64,
            max_queue: options.max_queue as u64,
            state: options.state.clone().map(Into::into),
        });
        let result = match self
            .conn
            .call_blocking("start", call, grace(options.call_timeout))
        {
            Ok(Reply::Done(result)) => result.map_err(CallError::from),
            Ok(other) => Err(unexpected("start", &other)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(RemoteInstance {
                conn: self.conn,
                generation: options.generation,
                plugin_version: self.version,
                source: self.source,
                call_timeout: options.call_timeout,
                in_flight: AtomicUsize::new(0),
                started_with: options.state,
            }),
            Err(e) => {
                self.conn.serving.store(false, Ordering::Release);
                Err((e, self))
            }
        }
    }

    /// Unloads the library and ends the child.
    pub fn unload(self) -> UnloadReport {
        self.conn.finish()
    }
}

/// An instance running in a child process.
pub struct RemoteInstance {
    conn: Arc<Conn>,
    generation: u64,
    plugin_version: String,
    source: PathBuf,
    call_timeout: Duration,
    in_flight: AtomicUsize,
    /// The state it started with: what a restart after a crash hands to the next generation.
    started_with: Option<PluginState>,
}

/// What a stopped remote instance leaves: the child with its library still open.
pub struct RemoteStopped {
    /// The library, ready to unload or start again.
    pub library: RemoteLibrary,
    /// Exported state.
    pub state: Option<PluginState>,
    /// An error from `export_state` or `stop`.
    pub error: Option<CallError>,
}

impl RemoteInstance {
    /// The platform id.
    pub fn platform(&self) -> &str {
        &self.conn.platform
    }

    /// This instance's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The library's own version.
    pub fn plugin_version(&self) -> &str {
        &self.plugin_version
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.conn.pid
    }

    /// Calls sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Deliveries from now on are refused.
    pub fn retire(&self) {
        self.conn.serving.store(false, Ordering::Release);
    }

    /// How the child died, if it did.
    pub fn crashed(&self) -> Option<String> {
        self.conn.exit()
    }

    /// The state this instance started with: what a restart after its crash hands on.
    pub fn last_state(&self) -> Option<PluginState> {
        self.started_with.clone()
    }

    /// Kills the child without counting a crash (it is being replaced).
    pub fn kill_replaced(&self, why: &str) {
        self.conn.expected.store(true, Ordering::Release);
        self.conn.kill(why);
    }

    fn counted(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.in_flight)
    }

    /// A child that answered a call with a timeout is killed: the call is stuck in it.
    fn check_hang<T>(&self, result: Result<T, CallError>) -> Result<T, CallError> {
        if let Err(CallError::Timeout { call, after }) = &result {
            self.conn.kill(&format!(
                "its {call} call did not return within {} ms",
                after.as_millis()
            ));
        }
        result
    }

    /// Sends a message, waiting on this thread.
    pub fn send(&self, message: &Outbound) -> Result<Receipt, CallError> {
        let _counted = self.counted();
        let reply =
            self.conn
                .call_blocking("send", Call::Send(message.into()), grace(self.call_timeout));
        self.check_hang(sent(reply))
    }

    /// Sends a message, awaiting the answer.
    pub async fn send_async(&self, message: &Outbound) -> Result<Receipt, CallError> {
        let _counted = self.counted();
        let reply = self
            .conn
            .call_async("send", Call::Send(message.into()), grace(self.call_timeout))
            .await;
        self.check_hang(sent(reply))
    }

    /// The plugin's health, waiting on this thread.
    pub fn health(&self) -> Result<Health, CallError> {
        let _counted = self.counted();
        let reply = self
            .conn
            .call_blocking("health", Call::Health, grace(self.call_timeout));
        self.check_hang(health(reply))
    }

    /// The plugin's health; `within` bounds the wait (the child is not killed for it).
    pub async fn health_async(&self, within: Duration) -> Result<Health, CallError> {
        let _counted = self.counted();
        let rx = self.conn.request(Call::Health)?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => self.check_hang(health(Ok(reply))),
            Ok(Err(_)) => Err(self.conn.crashed_error()),
            Err(_) => Err(CallError::Timeout {
                call: "health",
                after: within,
            }),
        }
    }

    /// Benchmark support: `n` raw FFI `health` calls in one job in the child.
    pub fn time_raw_health_calls(&self, n: u32) -> Result<Duration, CallError> {
        match self
            .conn
            .call_blocking("health", Call::RawHealth { n }, grace(self.call_timeout))?
        {
            Reply::Timed(result) => result.map(Duration::from_nanos).map_err(Into::into),
            other => Err(unexpected("health", &other)),
        }
    }

    /// Stops the instance in the child (which keeps its library open for an unload or a new
    /// start); a dead child cannot stop: [`StopError::Crashed`].
    pub fn stop(&self, export_state: bool, timeout: Duration) -> Result<RemoteStopped, StopError> {
        self.retire();
        let call = Call::Stop {
            export_state,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.conn.call_blocking("stop", call, grace(timeout)) {
            Ok(Reply::Stopped(Ok(stopped))) => Ok(RemoteStopped {
                library: RemoteLibrary {
                    conn: Arc::clone(&self.conn),
                    version: self.plugin_version.clone(),
                    source: self.source.clone(),
                },
                state: stopped.state.map(Into::into),
                error: stopped.error.map(Into::into),
            }),
            Ok(Reply::Stopped(Err(e))) => Err(e.into()),
            Ok(_) => Err(StopError::AlreadyStopped),
            Err(CallError::Timeout { after, .. }) => Err(StopError::StopTimedOut { after }),
            Err(_) => Err(StopError::Crashed {
                exit: self
                    .conn
                    .exit()
                    .unwrap_or_else(|| "closed its connection".into()),
            }),
        }
    }
}

impl std::fmt::Debug for RemoteInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteInstance")
            .field("platform", &self.conn.platform)
            .field("pid", &self.conn.pid)
            .field("generation", &self.generation)
            .finish()
    }
}

impl std::fmt::Debug for RemoteLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLibrary")
            .field("platform", &self.conn.platform)
            .field("pid", &self.conn.pid)
            .finish()
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long the gateway waits for a call's answer before it kills the child: a call may wait
/// `call_timeout_ms` in the child's queue and run as long again, as in process.
fn grace(timeout: Duration) -> Duration {
    timeout * 2
}

fn unexpected(call: &'static str, reply: &Reply) -> CallError {
    CallError::Plugin {
        call,
        message: format!("the child answered {reply:?}"),
        retryable: false,
    }
}

fn sent(reply: Result<Reply, CallError>) -> Result<Receipt, CallError> {
    match reply? {
        Reply::Sent(result) => result
            .map(|message_id| Receipt { message_id })
            .map_err(Into::into),
        other => Err(unexpected("send", &other)),
    }
}

fn health(reply: Result<Reply, CallError>) -> Result<Health, CallError> {
    match reply? {
        Reply::Health(result) => result.map(wire::health_from_wire).map_err(Into::into),
        other => Err(unexpected("health", &other)),
    }
}

/// Children are spawned by one thread that lives as long as the process: the kernel's
/// parent-death signal fires when the *thread* that forked a child exits, so a child spawned
/// from a pool thread that later ends would be killed with it.
mod spawner {
    use std::{
        process::{Child, Command},
        sync::{Mutex, OnceLock, mpsc},
    };

    type Job = (Command, oneshot::Sender<std::io::Result<Child>>);

    static JOBS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

    pub(super) fn spawn(command: Command) -> std::io::Result<Child> {
        let jobs = JOBS.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name("hermes-spawner".into())
                .spawn(move || {
                    for (mut command, reply) in rx {
                        let _ = reply.send(command.spawn());
                    }
                });
            if let Err(e) = started {
                tracing::error!("cannot start the child spawner thread: {e}");
            }
            Mutex::new(tx)
        });
        let (tx, rx) = oneshot::channel();
        jobs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((command, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}
