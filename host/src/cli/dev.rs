//! `hermes-host plugin dev <crate-dir>`: the edit-to-serving loop in one command.
//!
//! It builds the crate, makes sure a server runs (it starts `serve --dev` with the config when
//! none answers on the control socket), then watches the crate's `src/`, `Cargo.toml`,
//! `plugin.toml` and `build.rs` (through their folder, so a file saved by rename keeps being
//! watched). On a change it runs `cargo build`, showing the compiler's output; when the build
//! succeeds it has the server reload the plugin through the control socket (the reload
//! transaction: calls held, state handed over) and prints the edit-to-serving time; when the
//! build fails, the old generation keeps serving and it says so. When the library the server
//! resolves is not the one cargo reports it built (a stale copy earlier in the search), it says
//! which file serves instead. Ctrl-C or SIGTERM ends it,
//! and stops the server it started (never left running, orphaned); that server's output keeps
//! flowing to this command's own (a plugin's `println!` never meets a closed pipe).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use notify::{RecursiveMode, Watcher as _};

use crate::{
    config::Config,
    control::{Client, ClientError},
    manifest::{MANIFEST_FILE, Manifest},
};

/// Changes closer together than this make one build.
const SETTLE: Duration = Duration::from_millis(50);

/// Runs the loop until Ctrl-C (or the server it started exits).
pub(super) fn run(config: &Config, crate_dir: &Path) -> Result<()> {
    let crate_dir = crate_dir
        .canonicalize()
        .with_context(|| format!("{}", crate_dir.display()))?;
    let manifest = Manifest::load(&crate_dir.join(MANIFEST_FILE))?;
    let id = manifest.id.clone();
    let client = Client::new(&config.server.control_socket, Duration::from_secs(60));

    println!("dev: building {id} in {}", crate_dir.display());
    let Some(artifact) = cargo_build(&crate_dir)? else {
        bail!("the first build of {id} failed; fix it and run `plugin dev` again");
    };
    say_what_serves(config, &id, artifact.as_deref());
    let _server = ensure_server(config, &client)?;
    // The platform serves the build just made (a server already running may hold an old one).
    match client.blocking(client.reload(&id))? {
        Ok(outcome) => println!(
            "dev: {id} serving, generation {} ({})",
            outcome.new_generation, outcome.new_version
        ),
        Err(refusal) => println!("dev: {id} is not serving: {}", refusal.error),
    }

    let (tx, rx) = mpsc::channel();
    let signals = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(Msg::Fs(event));
    })?;
    stop_on_signals(signals)?;
    // The crate's folder, not its files: an editor's safe write (or `sed -i`) replaces a file
    // by a rename, and a watch on the file would follow the old inode, deaf to every later edit.
    watcher.watch(&crate_dir, RecursiveMode::NonRecursive)?;
    watcher.watch(&crate_dir.join("src"), RecursiveMode::Recursive)?;
    println!("dev: watching src/, Cargo.toml and plugin.toml; Ctrl-C to stop");
    loop {
        let first: notify::Result<notify::Event> = match rx.recv() {
            Ok(Msg::Fs(event)) => event,
            Ok(Msg::Stop) | Err(_) => return stopped(),
        };
        if !first.is_ok_and(|e| is_edit(&e, &crate_dir)) {
            continue;
        }
        let edited = Instant::now();
        // The rest of a save (editors write, rename, touch) folds into this build.
        while let Ok(msg) = rx.recv_timeout(SETTLE) {
            if matches!(msg, Msg::Stop) {
                return stopped();
            }
        }
        let built = cargo_build(&crate_dir)?;
        let build_ms = edited.elapsed().as_secs_f64() * 1e3;
        let Some(artifact) = built else {
            let serving = client
                .blocking(client.status())
                .ok()
                .and_then(|s| s.platforms.into_iter().find(|p| p.id == id))
                .map_or("nothing".to_owned(), |p| {
                    format!("generation {}", p.generation)
                });
            println!("dev: build failed; {serving} keeps serving");
            continue;
        };
        say_what_serves(config, &id, artifact.as_deref());
        match client.blocking(client.reload(&id))? {
            Ok(outcome) => println!(
                "dev: edit -> serving in {:.0} ms (build {build_ms:.0} ms, reload {:.1} ms, calls held {:.2} ms): generation {}",
                edited.elapsed().as_secs_f64() * 1e3,
                outcome.elapsed_ms,
                outcome.held_ms,
                outcome.new_generation
            ),
            Err(refusal) => println!(
                "dev: reload refused: {}{}",
                refusal.error,
                refusal
                    .serving_generation
                    .map(|g| format!("; generation {g} keeps serving"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// What the loop waits for.
enum Msg {
    /// A file event.
    Fs(notify::Result<notify::Event>),
    /// SIGTERM or SIGINT.
    Stop,
}

/// Sends [`Msg::Stop`] at SIGTERM or SIGINT, from a thread of its own.
fn stop_on_signals(tx: mpsc::Sender<Msg>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Installed here, before the loop: from now on a signal stops the loop instead of the
    // process (which would leave the server it started running).
    let (mut term, mut int) = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("hermes-dev-signals".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            let _ = tx.send(Msg::Stop);
        })?;
    Ok(())
}

/// The loop's end at a signal: the server it started stops as `run` returns.
fn stopped() -> Result<()> {
    println!("dev: stopping");
    Ok(())
}

/// The files at the top of the crate's folder whose edits make a build.
const TOP_FILES: [&str; 3] = ["Cargo.toml", MANIFEST_FILE, "build.rs"];

/// An edit to one of the crate's files: anything under `src/` (not a hidden editor file), or
/// one of [`TOP_FILES`], also when it is the target of a rename (a safe write); not an access.
fn is_edit(event: &notify::Event, crate_dir: &Path) -> bool {
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    ) && event.paths.iter().any(|p| {
        let Ok(inside) = p.strip_prefix(crate_dir) else {
            return false;
        };
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        (inside.starts_with("src") && !hidden) || TOP_FILES.iter().any(|f| inside == Path::new(f))
    })
}

/// `cargo build` in the crate, its diagnostics shown as they come: `None` when it failed,
/// else the cdylib it built, as cargo's JSON messages name it (`Some(None)` if none did).
fn cargo_build(crate_dir: &Path) -> Result<Option<Option<PathBuf>>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args([
            "build",
            "--message-format=json-render-diagnostics,json-diagnostic-short",
        ])
        .current_dir(crate_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", PathBuf::from(&cargo).display()))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut artifact = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        if let Some(path) = cdylib_of(&line?) {
            artifact = Some(path);
        }
    }
    Ok(child.wait()?.success().then_some(artifact))
}

/// The `.so` a `compiler-artifact` message of a cdylib target names.
fn cdylib_of(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact"
        || !message["target"]["kind"]
            .as_array()?
            .iter()
            .any(|k| k == "cdylib")
    {
        return None;
    }
    message["filenames"]
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.ends_with(".so"))
        .map(PathBuf::from)
}

/// Says plainly when the library the server would load for `id` (its plugin folder first, then
/// `plugins.library_dirs`) is not the one cargo just built: a stale copy earlier in the search
/// would otherwise serve while the loop reports success.
fn say_what_serves(config: &Config, id: &str, built: Option<&Path>) {
    let Some(built) = built else { return };
    let registry = crate::registry::Registry::discover(
        &config.plugins.search_dirs(),
        crate::registry::RegistryOptions::from_config(
            config,
            std::sync::Arc::new(crate::loader::DiscardInbound),
        ),
    );
    let Ok(entry) = registry.entry(id) else {
        println!(
            "dev: warning: no plugin `{id}` is installed in the server's plugin folders ({}); the server cannot load what this build made ({})",
            config
                .plugins
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            built.display()
        );
        return;
    };
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    match registry.resolve_library(entry) {
        Ok(loaded) if same(&loaded, built) => {}
        Ok(loaded) => println!(
            "dev: warning: the server loads {}, not what this build made ({}): it comes first in the search (the plugin's folder, then plugins.library_dirs in order); remove it, or put {} first in plugins.library_dirs",
            loaded.display(),
            built.display(),
            built.parent().unwrap_or(Path::new(".")).display()
        ),
        Err(e) => println!(
            "dev: warning: the server cannot find what this build made ({}): {e}",
            built.display()
        ),
    }
}

/// A server that this command started, stopped when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The running server, or one started now with `serve --dev` on the same config.
fn ensure_server(config: &Config, client: &Client) -> Result<Option<Started>> {
    match client.blocking(client.status()) {
        Ok(_) => return Ok(None),
        Err(ClientError::NotRunning(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(file) = &config.source else {
        bail!("no server runs and there is no config file to start one with; give -c hermes.toml");
    };
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(file)
        .args(["serve", "--dev"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `hermes-host serve --dev`")?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line)?;
    if !line.starts_with("hermes-host ready") {
        let _ = child.kill();
        bail!("the server did not start (see its log above)");
    }
    println!("dev: started {}", line.trim_end());
    // What the server prints after (a plugin's `println!`) goes on to our stdout.
    std::thread::Builder::new()
        .name("hermes-dev-output".into())
        .spawn(move || {
            let _ = std::io::copy(&mut reader, &mut std::io::stdout());
        })?;
    Ok(Some(Started(child)))
}
