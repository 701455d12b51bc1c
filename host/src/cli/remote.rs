//! The commands that talk to the running server through its control socket, with the typed
//! answers of [`control::Client`].

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::Result;

use super::table::write_table;
use crate::{
    config::Config,
    control::{self, Answer, Client},
    message::Outbound,
    registry::PlatformStatus,
};

/// How long a command waits for the server (a reload may wait out a call timeout).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn client(config: &Config) -> Client {
    Client::new(&config.server.control_socket, CLIENT_TIMEOUT)
}

/// Prints a refusal (`error: ...`) and returns the failing exit code.
pub(super) fn refused(refusal: &control::Refusal, extra: &str) -> ExitCode {
    let retry = if refusal.retryable {
        " (retryable)"
    } else {
        ""
    };
    eprintln!("error: {}{extra}{retry}", refusal.error);
    ExitCode::FAILURE
}

pub(super) fn status(config: &Config, json: bool) -> Result<ExitCode> {
    let client = client(config);
    let status = client.blocking(client.status())?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let stale = status
        .resident_stale_libraries
        .map_or("unknown".to_owned(), |n| n.to_string());
    writeln!(
        out,
        "hermes-host pid {} up {:.0} s, http://{}, warm-up {}, in flight {}, journal {}, resident stale libraries {stale}",
        status.pid,
        status.uptime_secs,
        status.listen,
        status.warmup.as_str(),
        status.in_flight,
        status.journal.state,
    )?;
    write_table(
        &mut out,
        &status.platforms,
        Some(("SANDBOX", &super::table::sandbox_cell)),
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn send(config: &Config, platform: &str, chat: &str, text: &str) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let client = client(config);
    let message = Outbound::new(chat.to_owned(), text.to_owned());
    Ok(match client.blocking(client.send(platform, &message))? {
        Ok(sent) => {
            writeln!(
                out,
                "sent {} through {} (generation {})",
                sent.message_id, sent.platform, sent.generation
            )?;
            ExitCode::SUCCESS
        }
        Err(refusal) => refused(
            &refusal,
            &format!(" (send failed, HTTP {})", refusal.status),
        ),
    })
}

pub(super) fn journal_reopen(config: &Config) -> Result<ExitCode> {
    let client = client(config);
    match client.blocking(client.journal_reopen())? {
        Ok(status) => {
            println!("journal {} reopened", status.path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => Ok(refused(&refusal, "")),
    }
}

pub(super) fn reload_config(config: &Config) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let client = client(config);
    let change = match client.blocking(client.reload_config())? {
        Ok(change) => change,
        Err(refusal) => return Ok(refused(&refusal, "")),
    };
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    writeln!(
        out,
        "config reloaded: added {}; removed {}; changed {}; routes {}",
        list(&change.added),
        list(&change.removed),
        list(&change.changed),
        if change.routes_changed {
            "replaced"
        } else {
            "unchanged"
        }
    )?;
    if !change.failures.is_empty() {
        eprintln!(
            "error: applying it partly failed: {}",
            list(&change.failures)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn reload(config: &Config, id: &str) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let client = client(config);
    let outcome = match client.blocking(client.reload(id))? {
        Ok(outcome) => outcome,
        Err(refusal) => {
            let serving = refusal
                .serving_generation
                .map(|g| format!("; generation {g} still serving"))
                .unwrap_or_default();
            return Ok(refused(&refusal, &serving));
        }
    };
    let generation = |g: Option<u64>| g.map_or("none".to_owned(), |g| g.to_string());
    let unmapped = match outcome.old_unload.as_ref().and_then(|r| r.unmapped) {
        Some(true) => "; old copy unmapped",
        Some(false) => "; old copy STILL MAPPED",
        None => "",
    };
    let lost = match (&outcome.old_crashed, outcome.state_lost) {
        (Some(exit), _) => format!(
            "; the old generation had crashed (its process {exit}): the new one started with the state the old one started with"
        ),
        (None, true) => "; the old generation was hung: its state was lost".to_owned(),
        (None, false) => String::new(),
    };
    writeln!(
        out,
        "reloaded {id}: generation {} ({}) -> {} ({}) in {:.1} ms, calls held {:.2} ms (old stop {:.2} ms, new start {:.2} ms){unmapped}{lost}",
        generation(outcome.old_generation),
        outcome.old_version.as_deref().unwrap_or("-"),
        outcome.new_generation,
        outcome.new_version,
        outcome.elapsed_ms,
        outcome.held_ms,
        outcome.stop_ms,
        outcome.start_ms,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn hotreload_switch(config: &Config, id: &str, on: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let client = client(config);
    let answer: Answer<_> = client.blocking(client.hotreload(id, on))?;
    Ok(match answer {
        Ok(status) => {
            match status.path.filter(|_| status.watching) {
                Some(path) => writeln!(out, "hot reload on for {id}: watching {}", path.display())?,
                None => writeln!(out, "hot reload off for {id}")?,
            }
            ExitCode::SUCCESS
        }
        Err(refusal) => refused(&refusal, ""),
    })
}

pub(super) fn hotreload_status(config: &Config, json: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let client = client(config);
    let overview = client.blocking(client.hotreload_status())?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&overview)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "hot reload {} (debounce {} ms); resident stale libraries {}",
        if overview.allowed {
            "allowed"
        } else {
            "not allowed"
        },
        overview.debounce_ms,
        overview
            .resident_stale_libraries
            .map_or("unknown".to_owned(), |n| n.to_string())
    )?;
    if overview.plugins.is_empty() {
        writeln!(out, "(no plugin configured, watched or reloaded)")?;
    }
    for p in overview.plugins {
        let last = match &p.reloads.last {
            None => "never reloaded".to_owned(),
            Some(last) => format!(
                "last reload {} by {} in {:.1} ms, {} ago",
                last.outcome,
                last.trigger,
                last.latency_ms,
                ago(last.at_ms)
            ),
        };
        let watching = match p.path.as_ref().filter(|_| p.watching) {
            Some(path) => format!("watching {},", path.display()),
            None => "not watching,".to_owned(),
        };
        writeln!(
            out,
            "{}: {watching} generation {} ({}); {} done, {} refused; {last}",
            p.id,
            p.generation,
            p.state.as_str(),
            p.reloads.done,
            p.reloads.refused,
        )?;
        if let Some(error) = &p.reloads.last_error {
            writeln!(out, "  last error: {error}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `12 s`, `4 min`, `3 h` since `at_ms` (ms since the Unix epoch).
fn ago(at_ms: i64) -> String {
    let secs = (hermes_plugin_api::now_ms() - at_ms).max(0) / 1000;
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// The running server's view of `id` (generation, loaded version), if a server answers.
pub(super) fn live_status(config: &Config, id: &str) -> Option<PlatformStatus> {
    let client = Client::new(&config.server.control_socket, Duration::from_secs(2));
    client
        .blocking(client.status())
        .ok()?
        .platforms
        .into_iter()
        .find(|p| p.id == id)
}
