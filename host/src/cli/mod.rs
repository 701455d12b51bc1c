//! The `hermes-host` command line: [`Cli`] parses, [`run`] dispatches.
//!
//! `plugin list`, `info` and `check` work on the installed plugins directly (`local`); `status`,
//! `send`, `plugin reload` and the `hotreload-*` commands talk to the running server through its
//! control socket (`remote`).

mod deadletters;
mod dev;
mod local;
mod lock;
mod remote;
pub mod scaffold;
mod table;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};

/// A messaging gateway whose platform adapters are plugins loaded at run time.
#[derive(Debug, Parser)]
#[command(name = "hermes-host", version, about)]
pub struct Cli {
    /// The config file (default `./hermes.toml`, whose absence means the defaults; a file
    /// named here must exist).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Log filter (overridden by RUST_LOG), e.g. `info` or `hermes_host=debug`; the default is
    /// `info` for `serve` and `warn` for the other commands.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log lines as `text` (for a person) or `json` (one object a line, the event's fields
    /// (`platform`, `generation`, ...) at its top level: for journald and log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `hermes-host journal ...`.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Reopen the journal's path (as SIGUSR1 does), after a log rotation renamed the file.
    Reopen,
}

/// `hermes-host deadletters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List the dead letters: queued sends given up on, with their last error.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only this platform's.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Queue a dead letter again (or all of them, `--all`, of one platform with `--platform`).
    Replay {
        /// The delivery id.
        delivery_id: Option<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "delivery_id")]
        all: bool,
        /// With `--all`: only this platform's.
        #[arg(long, requires = "all")]
        platform: Option<String>,
    },
    /// Drop a dead letter for good.
    Drop {
        /// The delivery id.
        delivery_id: String,
    },
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP API, control socket, routes, journal.
    Serve {
        /// Development mode: allows hot reload whatever the config says.
        #[arg(long)]
        dev: bool,
    },
    /// Show the running server's status (through its control socket).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the running server re-read its config file (as SIGHUP does): applied or refused
    /// as a whole.
    ReloadConfig,
    /// The running server's journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// The running server's dead letters (queued sends given up on).
    #[command(subcommand)]
    Deadletters(DeadLettersCommand),
    /// Probes a library for the host (internal): opens the file with every load-time check in
    /// this short-lived process and prints the report.
    #[command(name = "__probe", hide = true)]
    Probe {
        /// The shadow copy to open.
        copy: PathBuf,
    },
    /// Runs one isolated platform for the host (internal): loads its library in this child
    /// process and serves the gateway's calls over the socket on standard input.
    #[command(name = "__isolate", hide = true)]
    Isolate {
        /// The gateway's pid: the child refuses to run if it is no longer its parent.
        #[arg(long)]
        parent: u32,
        /// The platform id (shown in `ps`).
        #[arg(long)]
        platform: String,
        /// The address-space limit (RLIMIT_AS) in MiB.
        #[arg(long)]
        memory_limit_mb: Option<u64>,
        /// The sandbox to apply before the library is opened (JSON of `sandbox::Policy`).
        #[arg(long)]
        sandbox: String,
        /// Where its shadow folder goes (claimed before the sandbox closes the rest).
        #[arg(long)]
        shadow_root: std::path::PathBuf,
    },
    /// Send a message through the running server.
    Send {
        /// The platform id.
        platform: String,
        /// The chat (channel, nick, topic...).
        chat: String,
        /// The text.
        text: String,
    },
    /// Inspect installed plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// `hermes-host plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List installed plugins (reads manifests only; loads nothing).
    List(JsonFlag),
    /// Pin the libraries of the plugins named (or of every installed one) by SHA-256 in
    /// hermes.lock, beside the config, for `[plugins] trust = "lock"`.
    Lock {
        /// Plugin ids; none: every installed plugin whose library is found.
        ids: Vec<String>,
    },
    /// Show one plugin's manifest, library path and environment (loads nothing).
    Info {
        /// The plugin id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reload a plugin in the running server, as a transaction (old generation kept on failure).
    Reload {
        /// The plugin id.
        id: String,
    },
    /// Watch a plugin's library in the running server and reload it when it is rebuilt.
    HotreloadEnable {
        /// The plugin id.
        id: String,
    },
    /// Stop watching a plugin's library.
    HotreloadDisable {
        /// The plugin id.
        id: String,
    },
    /// Show what the running server watches and how its reloads went.
    HotreloadStatus {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a new plugin crate that builds, tests and serves as it is.
    New {
        /// The plugin id (also the crate's name).
        id: String,
        /// Where to write it; `./<id>` by default. Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The hermes-plugin-api crate to depend on by path; by default this checkout's when
        /// there is one, otherwise the crates.io release of this version.
        #[arg(long)]
        api_path: Option<PathBuf>,
    },
    /// The edit-to-serving loop: build the plugin crate on every change and have the running
    /// server (started if none runs) reload it; prints the edit-to-serving time each round.
    Dev {
        /// The plugin's crate (with its plugin.toml).
        #[arg(default_value = ".")]
        crate_dir: PathBuf,
    },
    /// Lift the quarantine of a plugin whose library took the process down while loading.
    Unquarantine {
        /// The plugin id.
        id: String,
    },
    /// Load a plugin from a scratch copy, check its ABI and config, unload it.
    Check {
        /// The plugin id.
        id: String,
        /// Also start and stop a throwaway instance.
        #[arg(long)]
        start: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// On an ABI mismatch, print abi_stable's full layout comparison too.
        #[arg(long)]
        verbose: bool,
    },
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command line; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> Result<ExitCode> {
    // The probe child needs no config and logs nothing: it only reports on one file.
    if let Command::Probe { copy } = &cli.command {
        return Ok(crate::probe::child_main(copy));
    }
    // An isolated child logs what the host's loader reports in it to stderr, at `warn`; the
    // plugin's own records go to the gateway over the socket.
    if let Command::Isolate {
        parent,
        memory_limit_mb,
        sandbox,
        shadow_root,
        ..
    } = cli.command
    {
        init_logging("warn", LogFormat::Text);
        return Ok(crate::isolate::child::child_main(
            crate::isolate::child::Args {
                parent,
                memory_limit_mb,
                sandbox,
                shadow_root,
            },
        ));
    }
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    init_logging(
        cli.log_level.as_deref().unwrap_or(default_level),
        cli.log_format,
    );
    let started = std::time::Instant::now();
    let config = match &cli.config {
        // Named explicitly: a typo must not silently mean the defaults.
        Some(path) if !path.exists() => anyhow::bail!(
            "{}: no such config file (without --config: $HERMES_CONFIG, ./{DEFAULT_CONFIG}, $XDG_CONFIG_HOME/hermes/{DEFAULT_CONFIG}, {})",
            path.display(),
            crate::config::paths::SYSTEM_CONFIG
        ),
        Some(path) => Config::load(path)?,
        None => match crate::config::paths::find_config(&crate::config::paths::ProcessEnv)
            .map_err(anyhow::Error::msg)?
        {
            Some(path) => Config::load(&path)?,
            // None anywhere: the defaults, relative to the working folder.
            None => Config::load(std::path::Path::new(DEFAULT_CONFIG))?,
        },
    };
    match cli.command {
        Command::Serve { dev } => {
            let config_ms = started.elapsed().as_secs_f64() * 1e3;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.server.worker_threads)
                .enable_all()
                .build()?;
            runtime.block_on(crate::serve::run(config, config_ms, dev))?;
            // Plugin worker threads are joined; nothing left on the runtime matters.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => remote::status(&config, json),
        Command::ReloadConfig => remote::reload_config(&config),
        Command::Journal(JournalCommand::Reopen) => remote::journal_reopen(&config),
        Command::Deadletters(command) => deadletters::run(&config, command),
        Command::Send {
            platform,
            chat,
            text,
        } => remote::send(&config, &platform, &chat, &text),
        Command::Plugin(command) => local::plugin(&config, command),
        // Answered above, before the config is read.
        Command::Probe { copy } => Ok(crate::probe::child_main(&copy)),
        Command::Isolate { .. } => unreachable!("answered above"),
    }
}

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        // Colours only for a person at a terminal; log files and pipes get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
