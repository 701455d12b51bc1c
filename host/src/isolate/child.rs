//! The child's side: `hermes-host __isolate`, which loads one platform's library with the
//! host's own loader (so its invariants hold here too) and serves the gateway's calls over the
//! socket it got as its standard input.
//!
//! Before anything else it asks the kernel for SIGKILL when its parent dies and checks that the
//! parent it was started by still lives, so a `kill -9` of the gateway takes it along (a
//! child left behind would keep the platform's session open under the same identity). It sets
//! its own address-space limit (`memory_limit_mb`) before the library is opened.
//!
//! Then it claims its own shadow folder and applies its sandbox (`--sandbox`; mode `off`
//! leaves rlimits only) to itself ([`crate::sandbox::enforce`]) while it is still one thread, and reports what
//! is enforced with the library it opens; a sandbox `strict` cannot meet is the answer to the
//! gateway's `open` instead (the library is never opened), so the platform's error names it.

use std::{
    collections::HashMap,
    io::Write,
    os::{fd::AsFd, unix::net::UnixStream},
    path::Path,
    process::ExitCode,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::wire::{
    self, Call, FrameReader, FromChild, Reply, StartCall, ToChild, WireCallError, WireOpened,
};
use crate::{
    loader::{EventSink, Instance, Library, ShadowDir, StartOptions},
    message::Inbound,
};

/// How long a plugin's `deliver` waits for the gateway's answer.
const DELIVER_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The child's command line.
pub(crate) struct Args {
    /// The gateway's pid.
    pub parent: u32,
    /// The address-space limit, if any.
    pub memory_limit_mb: Option<u64>,
    /// The sandbox policy as JSON (`sandbox::Policy`; its mode may be `off`).
    pub sandbox: String,
    /// Where the child's own shadow folder goes.
    pub shadow_root: std::path::PathBuf,
}

/// Runs the child.
pub(crate) fn child_main(args: Args) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-host __isolate: {e}");
            ExitCode::from(70)
        }
    }
}

fn run(args: Args) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, Signal};
    let Args {
        parent,
        memory_limit_mb,
        sandbox,
        shadow_root,
    } = args;
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    // The parent may have died before the line above: then nobody would kill this child.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
        return Err(std::io::Error::other(
            "the gateway that started this child is gone",
        ));
    }
    if let Some(mb) = memory_limit_mb {
        let bytes = mb.saturating_mul(1024 * 1024);
        rustix::process::setrlimit(
            Resource::As,
            Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            },
        )?;
    }
    // The socket is standard input; keep it on a descriptor of its own (close-on-exec) and put
    // /dev/null in its place, so a process the plugin spawns does not inherit the connection.
    let socket = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    rustix::stdio::dup2_stdin(std::fs::File::open("/dev/null")?)?;
    let mut policy: crate::sandbox::Policy = serde_json::from_str(&sandbox)
        .map_err(|e| std::io::Error::other(format!("--sandbox: {e}")))?;
    // Claimed before the sandbox closes the rest: the one folder of copies it may write.
    let (shadow, _) = ShadowDir::claim(&shadow_root).map_err(|e| {
        std::io::Error::other(format!("shadow folder {}: {e}", shadow_root.display()))
    })?;
    policy.write.push(shadow.path().to_owned());
    let enforced = crate::sandbox::enforce::apply(&policy)
        .map_err(|e| format!("sandbox = \"{}\" cannot be met: {e}", policy.mode.name()));
    serve(socket, shadow, enforced)
}

/// What the child holds: the library (while no instance runs) or the instance, and the
/// deliveries waiting for the gateway's answer.
struct Shared {
    writer: Mutex<UnixStream>,
    shadow: ShadowDir,
    /// What the sandbox enforces, reported with the library opened; `Err`: why it could not
    /// be applied, the answer to every `open`.
    sandbox: Result<crate::sandbox::Enforced, String>,
    library: Mutex<Option<Library>>,
    instance: RwLock<Option<Arc<Instance>>>,
    deliveries: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    next_delivery: AtomicU64,
}

impl Shared {
    /// Writes one frame to the gateway, from whichever thread has it (a worker writes the
    /// reply to the call it ran). A gateway that is gone ends this process.
    fn write(&self, frame: &FromChild) {
        let bytes = match wire::encode(frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!("cannot encode a frame for the gateway: {e}");
                return;
            }
        };
        let written = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&bytes);
        if written.is_err() {
            std::process::exit(0);
        }
    }

    fn reply(&self, id: u64, reply: Reply) {
        self.write(&FromChild::Reply { id, reply });
    }

    fn instance(&self) -> Option<Arc<Instance>> {
        self.instance
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The loader's sink in the child: deliveries and logs go to the gateway.
struct ToGateway(Arc<Shared>);

impl EventSink for ToGateway {
    fn inbound(&self, message: Inbound) -> Result<(), String> {
        let id = self.0.next_delivery.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0
            .deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        self.0.write(&FromChild::Deliver {
            id,
            message: message.into(),
        });
        match rx.recv_timeout(DELIVER_ANSWER_WITHIN) {
            Ok(result) => result,
            Err(_) => {
                self.0
                    .deliveries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err("the gateway did not take the message".into())
            }
        }
    }

    fn log(&self, _platform: &str, generation: u64, level: u8, target: &str, message: &str) {
        self.0.write(&FromChild::Log {
            generation,
            level,
            target: target.to_owned(),
            message: message.to_owned(),
        });
    }
}

/// Reads the gateway's frames on this thread. Sends and health go straight to the instance's
/// workers, which write their replies themselves; the rare calls (open, start, stop...) run on
/// a thread each, so this loop stays free to take the gateway's answers to deliveries.
fn serve(
    socket: UnixStream,
    shadow: ShadowDir,
    sandbox: Result<crate::sandbox::Enforced, String>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        writer: Mutex::new(socket.try_clone()?),
        shadow,
        sandbox,
        library: Mutex::new(None),
        instance: RwLock::new(None),
        deliveries: Mutex::new(HashMap::new()),
        next_delivery: AtomicU64::new(0),
    });
    let mut frames = FrameReader::new(socket);
    while let Some(message) = frames.read_frame::<ToChild>()? {
        match message {
            ToChild::Delivered { id, result } => {
                let waiting = shared
                    .deliveries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = waiting {
                    let _ = tx.send(result);
                }
            }
            ToChild::Call {
                id,
                call: Call::Send(message),
            } => match shared.instance() {
                Some(instance) => {
                    let shared = Arc::clone(&shared);
                    instance.send_then(message.into(), move |result| {
                        let result = result.map(|r| r.message_id).map_err(|e| (&e).into());
                        shared.reply(id, Reply::Sent(result));
                    });
                }
                None => shared.reply(id, Reply::Sent(Err(WireCallError::Stopped))),
            },
            ToChild::Call {
                id,
                call: Call::Health,
            } => match shared.instance() {
                Some(instance) => {
                    let shared = Arc::clone(&shared);
                    instance.health_then(move |result| {
                        let result = result.map(wire::health_to_wire).map_err(|e| (&e).into());
                        shared.reply(id, Reply::Health(result));
                    });
                }
                None => shared.reply(id, Reply::Health(Err(WireCallError::Stopped))),
            },
            ToChild::Call {
                id,
                call: Call::Unload,
            } => {
                let library = shared
                    .library
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let report = match library {
                    Some(library) => library.unload(),
                    None => crate::loader::UnloadReport {
                        shadow_path: Default::default(),
                        closed: true,
                        unmapped: None,
                        shadow_deleted: true,
                        detail: Some("no library was open".into()),
                    },
                };
                shared.reply(id, Reply::Unloaded(report.into()));
                break;
            }
            ToChild::Call { id, call } => {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("hermes-isolate-call".into())
                    .spawn(move || {
                        let reply = blocking_call(&shared, call);
                        shared.reply(id, reply);
                    })?;
            }
        }
    }
    // The gateway asked it to go, or closed the connection: exit without waiting for plugin
    // threads (the process ends them).
    std::process::exit(0)
}

fn blocking_call(shared: &Arc<Shared>, call: Call) -> Reply {
    let stopped = || WireCallError::Stopped;
    match call {
        Call::Open { path } => Reply::Opened(open(shared, &path)),
        Call::ValidateConfig {
            config_json,
            timeout_ms,
        } => {
            let library = shared.library.lock().unwrap_or_else(|e| e.into_inner());
            Reply::Done(match library.as_ref() {
                Some(library) => library
                    .validate_config(&config_json, Duration::from_millis(timeout_ms))
                    .map_err(|e| (&e).into()),
                None => Err(stopped()),
            })
        }
        Call::Start(start) => Reply::Done(self::start(shared, start)),
        Call::RawHealth { n } => Reply::Timed(match shared.instance() {
            Some(instance) => instance
                .time_raw_health_calls(n)
                .map(|d| d.as_nanos() as u64)
                .map_err(|e| (&e).into()),
            None => Err(stopped()),
        }),
        Call::Stop {
            export_state,
            timeout_ms,
        } => {
            let Some(instance) = shared.instance() else {
                return Reply::Stopped(Err(wire::WireStopError::AlreadyStopped));
            };
            match instance.stop(export_state, Duration::from_millis(timeout_ms)) {
                Ok(stopped) => {
                    *shared.instance.write().unwrap_or_else(|e| e.into_inner()) = None;
                    *shared.library.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(stopped.library);
                    Reply::Stopped(Ok(wire::WireStopped {
                        state: stopped.state.map(Into::into),
                        error: stopped.error.as_ref().map(Into::into),
                    }))
                }
                Err(e) => Reply::Stopped(Err((&e).into())),
            }
        }
        Call::Send(_) | Call::Health | Call::Unload => Reply::Done(Err(stopped())),
    }
}

fn open(shared: &Shared, path: &str) -> Result<WireOpened, String> {
    let sandbox = shared.sandbox.clone()?;
    let library =
        Library::open(Path::new(path), shared.shadow.path()).map_err(|e| e.to_string())?;
    let opened = WireOpened {
        version: library.plugin_version().to_owned(),
        level: library.level(),
        sandbox,
    };
    *shared.library.lock().unwrap_or_else(|e| e.into_inner()) = Some(library);
    Ok(opened)
}

fn start(shared: &Arc<Shared>, start: StartCall) -> Result<(), WireCallError> {
    let library = shared
        .library
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(library) = library else {
        return Err(WireCallError::Stopped);
    };
    let options = StartOptions {
        platform: start.platform,
        generation: start.generation,
        config_json: start.config_json,
        sink: Arc::new(ToGateway(Arc::clone(shared))),
        workers: start.workers as usize,
        call_timeout: Duration::from_millis(start.call_timeout_ms),
        max_queue: start.max_queue as usize,
        state: start.state.map(Into::into),
        data_dir: (!start.data_dir.is_empty()).then(|| start.data_dir.into()),
        max_attachment_bytes: start.max_attachment_bytes,
    };
    match library.start(options) {
        Ok(instance) => {
            *shared.instance.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(instance));
            Ok(())
        }
        Err(failure) => {
            *shared.library.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure.library);
            Err((&failure.error).into())
        }
    }
}
