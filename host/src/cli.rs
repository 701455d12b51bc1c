//! The `hermes-host` command line.

use std::{io::Write as _, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use hermes_plugin_api::abi::ABI_VERSION;
use serde_json::json;

use crate::{
    check,
    config::{Config, DEFAULT_CONFIG},
    control,
    loader::DiscardInbound,
    registry::{PlatformStatus, Registry, RegistryOptions},
};

/// A messaging gateway whose platform adapters are plugins loaded at run time.
#[derive(Debug, Parser)]
#[command(name = "hermes-host", version, about)]
pub struct Cli {
    /// The config file; a missing file means the defaults.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log filter (overridden by RUST_LOG), e.g. `info` or `hermes_host=debug`; the default is
    /// `info` for `serve` and `warn` for the other commands.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    let started = std::time::Instant::now();
    let config = Config::load(&cli.config)?;
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
        Command::Status { json } => status(&config, json),
        Command::Send {
            platform,
            chat,
            text,
        } => send(&config, &platform, &chat, &text),
        Command::Plugin(command) => plugin(&config, command),
    }
}

const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn status(config: &Config, json: bool) -> Result<ExitCode> {
    let socket = &config.server.control_socket;
    let (code, body) = control::request(socket, "GET", "/status", None, CLIENT_TIMEOUT)?;
    if code != 200 {
        anyhow::bail!("status: HTTP {code}: {body}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "hermes-host pid {} up {:.0} s, http://{}, warm-up {}, in flight {}, resident stale libraries {}",
        body["pid"],
        body["uptime_secs"].as_f64().unwrap_or(0.0),
        body["listen"].as_str().unwrap_or("?"),
        body["warmup"].as_str().unwrap_or("?"),
        body["in_flight"],
        body["resident_stale_libraries"],
    )?;
    let list: Vec<PlatformStatus> = body["platforms"]
        .as_array()
        .map(|a| a.iter().filter_map(platform_status_from_json).collect())
        .unwrap_or_default();
    write_table(&mut out, &list)?;
    Ok(ExitCode::SUCCESS)
}

fn platform_status_from_json(p: &serde_json::Value) -> Option<PlatformStatus> {
    let state = match p["state"].as_str()? {
        "registered" => crate::registry::EntryState::Registered,
        "loading" => crate::registry::EntryState::Loading,
        "running" => crate::registry::EntryState::Running,
        "stopping" => crate::registry::EntryState::Stopping,
        "unloaded" => crate::registry::EntryState::Unloaded,
        _ => crate::registry::EntryState::Failed,
    };
    Some(PlatformStatus {
        id: p["id"].as_str()?.to_owned(),
        name: p["name"].as_str().unwrap_or_default().to_owned(),
        version: p["version"].as_str().unwrap_or_default().to_owned(),
        manifest_version: p["manifest_version"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        api: p["api"].as_u64().unwrap_or(0) as u32,
        state,
        generation: p["generation"].as_u64().unwrap_or(0),
        configured: p["configured"].as_bool().unwrap_or(false),
        error: p["error"].as_str().map(str::to_owned),
        description: String::new(),
        emoji: None,
        manifest_path: PathBuf::new(),
        loads: p["loads"].as_u64().unwrap_or(0),
        load_seconds: 0.0,
        last_load_ms: None,
        in_flight: 0,
    })
}

fn send(config: &Config, platform: &str, chat: &str, text: &str) -> Result<ExitCode> {
    let body = json!({ "chat_id": chat, "text": text });
    let path = format!("/platforms/{}/send", utf8_percent(platform));
    let (code, answer) = control::request(
        &config.server.control_socket,
        "POST",
        &path,
        Some(&body),
        CLIENT_TIMEOUT,
    )?;
    if code == 200 {
        println!(
            "sent {} through {} (generation {})",
            answer["message_id"].as_str().unwrap_or("?"),
            answer["platform"].as_str().unwrap_or(platform),
            answer["generation"]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let retry = if answer["retryable"] == true {
            " (retryable)"
        } else {
            ""
        };
        eprintln!(
            "error: send failed (HTTP {code}): {}{retry}",
            answer["error"].as_str().unwrap_or("unknown error")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Percent-encodes everything but unreserved characters: ids go into a URL path, never a file path.
fn utf8_percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal; log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Builds the registry for a CLI command, printing discovery problems as warnings.
fn registry(config: &Config) -> Registry {
    let options = RegistryOptions::from_config(config, Arc::new(DiscardInbound));
    let registry = Registry::discover(&config.plugins.dirs, options);
    for problem in registry.problems() {
        eprintln!("warning: {problem}");
    }
    registry
}

fn plugin(config: &Config, command: PluginCommand) -> Result<ExitCode> {
    match &command {
        PluginCommand::Reload { id } => return reload(config, id),
        PluginCommand::HotreloadEnable { id } => return hotreload_switch(config, id, "POST"),
        PluginCommand::HotreloadDisable { id } => return hotreload_switch(config, id, "DELETE"),
        PluginCommand::HotreloadStatus { json } => return hotreload_status(config, *json),
        _ => {}
    }
    let registry = registry(config);
    let mut out = std::io::stdout().lock();
    match command {
        PluginCommand::List(flag) => {
            let list = registry.list();
            if flag.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                write_table(&mut out, &list)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Info { id, json } => {
            let entry = registry.entry(&id)?;
            let manifest = entry.manifest();
            let library = registry.resolve_library(entry);
            let env = |names: &[String]| -> Vec<serde_json::Value> {
                names
                    .iter()
                    .map(|n| json!({ "name": n, "present": std::env::var_os(n).is_some_and(|v| !v.is_empty()) }))
                    .collect()
            };
            if json {
                let info = json!({
                    "manifest": manifest,
                    "manifest_path": entry.manifest_path(),
                    "library_path": library.as_ref().ok(),
                    "library_error": library.as_ref().err(),
                    "required_env": env(&manifest.required_env),
                    "optional_env": env(&manifest.optional_env),
                    "status": entry.status(),
                    "live": live_status(config, &id),
                    "live": live_status(config, &id),
                    "host_api": ABI_VERSION,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                let status = entry.status();
                let emoji = manifest
                    .emoji
                    .as_deref()
                    .map(|e| format!(" {e}"))
                    .unwrap_or_default();
                writeln!(out, "{} - {}{emoji}", manifest.id, manifest.name)?;
                let mut row = |k: &str, v: String| writeln!(out, "  {k:<13} {v}");
                if !manifest.description.is_empty() {
                    row("description", manifest.description.clone())?;
                }
                row("version", manifest.version.clone())?;
                row(
                    "api",
                    format!("{} (this host speaks {ABI_VERSION})", manifest.api),
                )?;
                row("kind", manifest.kind.clone())?;
                row("manifest", entry.manifest_path().display().to_string())?;
                row(
                    "library",
                    match &library {
                        Ok(p) => p.display().to_string(),
                        Err(e) => e.clone(),
                    },
                )?;
                match live_status(config, &id) {
                    Some(live) => row(
                        "serving",
                        format!(
                            "{} in the running server: generation {}, version {}",
                            live["state"].as_str().unwrap_or("?"),
                            live["generation"],
                            live["version"].as_str().unwrap_or("?")
                        ),
                    )?,
                    None => row("serving", "no server running".to_owned())?,
                }
                let configured = if entry.platform_config().is_some() {
                    format!("yes ([platforms.{id}])")
                } else if entry.configured() {
                    "yes (enable_when holds)".to_owned()
                } else {
                    "no".to_owned()
                };
                row("configured", configured)?;
                for (label, names) in [
                    ("required env", &manifest.required_env),
                    ("optional env", &manifest.optional_env),
                ] {
                    if names.is_empty() {
                        continue;
                    }
                    let shown: Vec<String> = names
                        .iter()
                        .map(|n| {
                            let set = std::env::var_os(n).is_some_and(|v| !v.is_empty());
                            format!("{n} ({})", if set { "set" } else { "missing" })
                        })
                        .collect();
                    row(label, shown.join(", "))?;
                }
                if let Some(hint) = &manifest.install_hint {
                    row("install", hint.clone())?;
                }
                if let Some(error) = &status.error {
                    row("error", error.clone())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Check { id, start, json } => {
            let report = check::check(&registry, &id, start)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(out, "checking {id}")?;
                for step in &report.steps {
                    let mark = match step.ok {
                        Some(true) => "ok  ",
                        Some(false) => "FAIL",
                        None => "--  ",
                    };
                    writeln!(out, "  {mark} {:<9} {}", step.name, step.detail)?;
                }
                match report.reason() {
                    None => writeln!(out, "{id}: sound")?,
                    Some(reason) => {
                        out.flush()?;
                        eprintln!(
                            "error: {id} refused: {}",
                            reason.lines().next().unwrap_or(reason)
                        );
                    }
                }
            }
            Ok(if report.sound {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PluginCommand::Reload { .. }
        | PluginCommand::HotreloadEnable { .. }
        | PluginCommand::HotreloadDisable { .. }
        | PluginCommand::HotreloadStatus { .. } => {
            unreachable!("handled through the control socket above")
        }
    }
}

fn reload(config: &Config, id: &str) -> Result<ExitCode> {
    let path = format!("/platforms/{}/reload", utf8_percent(id));
    let (code, body) = control::request(
        &config.server.control_socket,
        "POST",
        &path,
        None,
        CLIENT_TIMEOUT,
    )?;
    let generation =
        |v: &serde_json::Value| v.as_u64().map_or("none".to_owned(), |g| g.to_string());
    if code == 200 {
        let unmapped = match body["old_unload"]["unmapped"].as_bool() {
            Some(true) => "; old copy unmapped",
            Some(false) => "; old copy STILL MAPPED",
            None => "",
        };
        println!(
            "reloaded {id}: generation {} ({}) -> {} ({}) in {:.1} ms, calls held {:.2} ms{unmapped}",
            generation(&body["old_generation"]),
            body["old_version"].as_str().unwrap_or("-"),
            generation(&body["new_generation"]),
            body["new_version"].as_str().unwrap_or("?"),
            body["elapsed_ms"].as_f64().unwrap_or(0.0),
            body["held_ms"].as_f64().unwrap_or(0.0),
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let serving = match body["serving_generation"].as_u64() {
            Some(g) => format!("; generation {g} still serving"),
            None => String::new(),
        };
        eprintln!(
            "error: {}{serving}",
            body["error"].as_str().unwrap_or("reload failed")
        );
        Ok(ExitCode::FAILURE)
    }
}

fn hotreload_switch(config: &Config, id: &str, method: &str) -> Result<ExitCode> {
    let path = format!("/platforms/{}/hotreload", utf8_percent(id));
    let (code, body) = control::request(
        &config.server.control_socket,
        method,
        &path,
        None,
        CLIENT_TIMEOUT,
    )?;
    if code == 200 {
        match body["path"].as_str() {
            Some(p) if body["watching"] == true => println!("hot reload on for {id}: watching {p}"),
            _ => println!("hot reload off for {id}"),
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {}",
            body["error"].as_str().unwrap_or("request failed")
        );
        Ok(ExitCode::FAILURE)
    }
}

fn hotreload_status(config: &Config, json: bool) -> Result<ExitCode> {
    let (code, body) = control::request(
        &config.server.control_socket,
        "GET",
        "/hotreload",
        None,
        CLIENT_TIMEOUT,
    )?;
    if code != 200 {
        anyhow::bail!("hotreload-status: HTTP {code}: {body}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "hot reload {} (debounce {} ms); resident stale libraries {}",
        if body["allowed"] == true {
            "allowed"
        } else {
            "not allowed"
        },
        body["debounce_ms"],
        body["resident_stale_libraries"]
    );
    let plugins = body["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        println!("(no plugin watched or reloaded)");
    }
    for p in plugins {
        let last = &p["last"];
        let last = if last.is_null() {
            "never reloaded".to_owned()
        } else {
            format!(
                "last reload {} by {} in {:.1} ms",
                last["outcome"].as_str().unwrap_or("?"),
                last["trigger"].as_str().unwrap_or("?"),
                last["latency_ms"].as_f64().unwrap_or(0.0)
            )
        };
        let watching = match p["path"].as_str() {
            Some(path) if p["watching"] == true => format!("watching {path},"),
            _ => "not watching,".to_owned(),
        };
        println!(
            "{}: {watching} generation {} ({}); {} done, {} refused; {last}",
            p["id"].as_str().unwrap_or("?"),
            p["generation"],
            p["state"].as_str().unwrap_or("?"),
            p["done"],
            p["refused"],
        );
        if let Some(error) = p["last_error"].as_str() {
            println!("  last error: {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The running server's view of `id` (generation, loaded version), if a server answers.
fn live_status(config: &Config, id: &str) -> Option<serde_json::Value> {
    let timeout = std::time::Duration::from_secs(2);
    let (code, body) = control::request(
        &config.server.control_socket,
        "GET",
        "/status",
        None,
        timeout,
    )
    .ok()?;
    (code == 200).then_some(())?;
    body["platforms"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
}

fn write_table(out: &mut impl std::io::Write, list: &[PlatformStatus]) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.name.clone(),
                s.version.clone(),
                s.api.to_string(),
                s.state.as_str().to_owned(),
                if s.configured { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "VERSION", "API", "STATE", "CONFIGURED"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    if list.is_empty() {
        writeln!(out, "(no plugins installed)")?;
    }
    Ok(())
}
