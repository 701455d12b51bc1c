//! One child process and its connection, the gateway's side: spawning (on one long-lived
//! thread), the reader thread that routes replies, deliveries and logs, the waiter thread that
//! reaps the child and fails the calls in flight, calls with their deadlines, and kills.

use std::{
    collections::HashMap,
    io::Write,
    os::{
        fd::OwnedFd,
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::wire::{self, Call, FrameReader, FromChild, Reply, ToChild};
use crate::loader::{CallError, EventSink, UnloadReport};

/// How long an unreadable frame waits for the child's exit before it is blamed: a child that
/// aborts mid-write is gone within this, and its exit names the real cause.
const DYING_GRACE: Duration = Duration::from_millis(200);

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
    /// The sandbox it applies to itself.
    pub sandbox: crate::sandbox::Policy,
    /// Where its own shadow folder goes (claimed before the sandbox is applied).
    pub shadow_root: PathBuf,
}

/// One child process and its connection.
pub(super) struct Conn {
    pub(super) platform: String,
    pub(super) pid: u32,
    pidfd: OwnedFd,
    writer: Mutex<UnixStream>,
    /// Calls waiting for their reply, by request id; emptied when the child is gone.
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    /// Why the child is gone, once it is (set under `pending`'s lock).
    exit: Mutex<Option<String>>,
    exited: Condvar,
    /// The gateway asked the child to go (an unload): its end is no crash.
    pub(super) expected: AtomicBool,
    /// Why the gateway killed it, for the exit's description.
    killed_for: Mutex<Option<String>>,
    sink: Arc<dyn EventSink>,
    /// The generation started in the child, and whether its deliveries are taken.
    pub(super) generation: AtomicU64,
    pub(super) serving: AtomicBool,
    /// What its sandbox enforces, once the child has reported it (with the library it opened).
    pub(super) sandbox: std::sync::OnceLock<crate::sandbox::Enforced>,
}

impl Conn {
    pub(super) fn spawn(spawn: &Spawn, sink: Arc<dyn EventSink>) -> std::io::Result<Arc<Conn>> {
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
        let policy = serde_json::to_string(&spawn.sandbox).map_err(std::io::Error::other)?;
        command
            .arg("--sandbox")
            .arg(policy)
            .arg("--shadow-root")
            .arg(&spawn.shadow_root);
        // What the plugin prints is read line by line and logged under its id, escaped: it
        // never reaches the gateway's stdout or stderr as raw bytes (forged log lines).
        command
            .env_clear()
            .envs(spawn.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawner::spawn(command)?;
        if let Some(out) = child.stdout.take() {
            relay_output(&spawn.platform, "stdout", out);
        }
        if let Some(err) = child.stderr.take() {
            relay_output(&spawn.platform, "stderr", err);
        }
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
            sandbox: std::sync::OnceLock::new(),
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
                // The connection ended under us: a child that dies with frames it had not read
                // resets it. Its exit, which the waiter reports, is the story, not the frame.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return;
                }
                Err(e) => {
                    // A frame the gateway cannot read: the child is no longer trusted, unless
                    // it is dying anyway (a frame cut short by an abort on another thread).
                    if self.wait_exit(DYING_GRACE).is_none() {
                        self.kill(&format!("it sent a frame the gateway cannot read ({e})"));
                    }
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
    pub(super) fn exit(&self) -> Option<String> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn crashed_error(&self) -> CallError {
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
    pub(super) fn request(&self, call: Call) -> Result<oneshot::Receiver<Reply>, CallError> {
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
    pub(super) fn call_blocking(
        &self,
        name: &'static str,
        call: Call,
        within: Duration,
    ) -> Result<Reply, CallError> {
        let rx = self.request(call)?;
        // A short spin first, as for in-process calls: an answer within it needs no wake-up.
        match crate::loader::await_answer(&rx, within) {
            Ok(reply) => Ok(reply),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(self.crashed_error()),
            Err(oneshot::RecvTimeoutError::Timeout) => Err(self.hung(name, within)),
        }
    }

    /// A call, awaited up to `within`; past that the child is killed.
    pub(super) async fn call_async(
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
    pub(super) fn kill(&self, why: &str) {
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
    pub(super) fn finish(&self) -> UnloadReport {
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

/// The longest line of a child's output logged as one record; longer ones are cut.
const MAX_OUTPUT_LINE: u64 = 4096;

/// Logs what a child writes to `stream`, a line per record (control characters escaped, lines
/// cut at [`MAX_OUTPUT_LINE`]), on a thread that ends when the child closes it.
fn relay_output(platform: &str, stream: &'static str, pipe: impl std::io::Read + Send + 'static) {
    use std::io::{BufRead as _, Read as _};
    let id = platform.to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("hermes-out-{stream}"))
        .spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_OUTPUT_LINE)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let whole = line.ends_with(b"\n");
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let text = crate::loader::escape_controls(text);
                let cut = if whole { "" } else { "…(cut)" };
                tracing::info!(target: "plugin", platform = %id, stream, "{text}{cut}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(platform, stream, error = %e, "cannot relay the child's output");
    }
}
