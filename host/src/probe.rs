//! The probe: a library file this process has not loaded before is opened first in a
//! short-lived child process, so that a file that crashes while loading (a damaged download,
//! `rsync --inplace` caught halfway, a disk error, a constructor that writes through a null
//! pointer) takes down the child, not the gateway.
//!
//! The child is `hermes-host` itself, run without a shell as `hermes-host __probe <copy>`: it
//! opens the very shadow copy the host is about to open (no second copy, so nothing can change
//! between the probe and the load) and runs every load-time check: the ELF bounds, `dlopen`
//! with the library's initialisers, the entry symbol, magic, ABI version, header size and the
//! vtable's layout. It prints one JSON line and exits. The host opens the copy only if the
//! child ran to its end; a child that dies by a signal, exits otherwise or runs past
//! [`PROBE_TIMEOUT`] refuses the load, naming what happened. A check that refuses the library
//! in the child refuses it in the host too, with the same typed error, since the host runs the
//! same checks.
//!
//! Verdicts are cached by the file's content hash (xxh3-128), so loading an unchanged file again
//! (first use after an idle unload, a reload of the same build) pays for hashing it, not for a
//! probe.

use std::{
    collections::HashMap,
    io::Read as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The hidden subcommand the child runs.
pub const PROBE_SUBCOMMAND: &str = "__probe";

/// How long a probe may take before it is killed and the load refused.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A file's content hash: what probe verdicts and quarantine records are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub u128);

impl ContentHash {
    /// Hashes the file at `path`.
    pub fn of_file(path: &Path) -> std::io::Result<ContentHash> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                return Ok(ContentHash(hasher.digest128()));
            }
            hasher.update(&buffer[..n]);
        }
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for ContentHash {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(ContentHash)
    }
}

/// Why a probe refused a library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The child died by a signal while loading the library.
    #[error("the library crashed the probe with {signal} while loading")]
    Crashed {
        /// The signal's name, e.g. `SIGSEGV`.
        signal: String,
    },
    /// The child exited without finishing (the library called `exit`, or the probe failed).
    #[error("the probe exited with code {code} while loading the library{}", detail_suffix(.detail.as_deref()))]
    Exited {
        /// The exit code.
        code: i32,
        /// The last line it wrote to stderr, if any.
        detail: Option<String>,
    },
    /// The child did not finish within [`PROBE_TIMEOUT`] (a constructor that hangs).
    #[error("the probe did not finish loading the library within {} ms; it was killed", after.as_millis())]
    TimedOut {
        /// The time it had.
        after: Duration,
    },
    /// The child could not be started.
    #[error("cannot start the probe {}: {message}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        message: String,
    },
}

fn detail_suffix(detail: Option<&str>) -> String {
    detail.map(|d| format!(": {d}")).unwrap_or_default()
}

/// What the child prints: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Whether every check passed.
    pub sound: bool,
    /// The plugin's version, when sound.
    #[serde(default)]
    pub version: Option<String>,
    /// The check that refused it, when not sound.
    #[serde(default)]
    pub error: Option<String>,
}

/// A finished probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The verdict came from the cache: no child ran.
    pub cached: bool,
    /// How long the probe took (hashing excluded).
    pub ms: f64,
}

/// Runs probes with one program and keeps their verdicts.
#[derive(Debug)]
pub struct Prober {
    program: PathBuf,
    timeout: Duration,
    verdicts: Mutex<HashMap<ContentHash, Result<(), ProbeError>>>,
}

impl Prober {
    /// Probes with `program` (a `hermes-host` binary), each given `timeout`.
    pub fn new(program: PathBuf, timeout: Duration) -> Prober {
        Prober {
            program,
            timeout,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// The `hermes-host` binary to probe with: this executable when it is `hermes-host` (run
    /// through `/proc/self/exe`, which works even after the file was replaced); for a program
    /// that embeds the library (tests, benches), the `hermes-host` binary beside it or one
    /// folder up (cargo's `target/<profile>/deps` layout); `None` when there is none.
    pub fn find_program() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        if exe.file_name().is_some_and(|n| n == "hermes-host") {
            return Some(PathBuf::from("/proc/self/exe"));
        }
        let dir = exe.parent()?;
        [dir.join("hermes-host"), dir.parent()?.join("hermes-host")]
            .into_iter()
            .find(|p| p.is_file())
    }

    /// Vets the shadow copy `copy`, whose content hash is `hash`: from the cache, or by a child.
    pub fn vet(&self, copy: &Path, hash: ContentHash) -> Result<Probed, ProbeError> {
        let cached = self
            .verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .cloned();
        if let Some(verdict) = cached {
            return verdict.map(|()| Probed {
                cached: true,
                ms: 0.0,
            });
        }
        let started = Instant::now();
        let verdict = self.run(copy).map(|_| ());
        // A child that could not be started says nothing about the library: not cached.
        if !matches!(verdict, Err(ProbeError::Spawn { .. })) {
            self.verdicts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hash, verdict.clone());
        }
        verdict.map(|()| Probed {
            cached: false,
            ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Runs one child on `copy`: its report, or how it failed.
    pub fn run(&self, copy: &Path) -> Result<ProbeReport, ProbeError> {
        let spawn_error = |e: std::io::Error| ProbeError::Spawn {
            program: self.program.clone(),
            message: e.to_string(),
        };
        let mut child = Command::new(&self.program)
            .arg(PROBE_SUBCOMMAND)
            .arg(copy)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let (tx, rx) = std::sync::mpsc::channel();
        // The pipes reach their end when the child exits; reader threads let the wait have a
        // time limit. Each pipe has its own, so a library that writes a lot to stderr while it
        // loads cannot block the child on a full pipe that nobody reads.
        let errors = std::thread::Builder::new()
            .name("hermes-probe-stderr".into())
            .spawn(move || {
                let mut err = String::new();
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_string(&mut err);
                }
                err
            })
            .map_err(spawn_error)?;
        let reader = std::thread::Builder::new()
            .name("hermes-probe-stdout".into())
            .spawn(move || {
                let mut out = String::new();
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_string(&mut out);
                }
                let err = errors.join().unwrap_or_default();
                let _ = tx.send((out, err));
            })
            .map_err(spawn_error)?;
        let output = rx.recv_timeout(self.timeout);
        let Ok((out, err)) = output else {
            let _ = child.kill();
            let _ = child.wait();
            drop(reader);
            return Err(ProbeError::TimedOut {
                after: self.timeout,
            });
        };
        let _ = reader.join();
        let status = child.wait().map_err(spawn_error)?;
        if let Some(signal) = status.signal() {
            return Err(ProbeError::Crashed {
                signal: signal_name(signal),
            });
        }
        let report = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<ProbeReport>(l).ok());
        match (status.code(), report) {
            (Some(0), Some(report)) => Ok(report),
            (code, _) => Err(ProbeError::Exited {
                code: code.unwrap_or(-1),
                detail: err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            }),
        }
    }
}

/// `SIGSEGV` and the like; `signal N` for the rest.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTRAP => "SIGTRAP",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// The child's side: opens `copy` in place with every load-time check, prints the report.
pub fn child_main(copy: &Path) -> ExitCode {
    let report = match crate::loader::Library::check_in_place(copy) {
        Ok(version) => ProbeReport {
            sound: true,
            version: Some(version),
            error: None,
        },
        Err(e) => ProbeReport {
            sound: false,
            version: None,
            error: Some(e.to_string()),
        },
    };
    match serde_json::to_string(&report) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}
