//! The commands that talk to the running server through its control socket.

use std::{io::Write as _, process::ExitCode};

use anyhow::Result;
use serde_json::json;

use super::table::write_table;
use crate::{config::Config, control, registry::PlatformStatus};

const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) fn status(config: &Config, json: bool) -> Result<ExitCode> {
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
        .map(|a| {
            a.iter()
                .filter_map(|p| serde_json::from_value(p.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    write_table(&mut out, &list)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn send(config: &Config, platform: &str, chat: &str, text: &str) -> Result<ExitCode> {
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

pub(super) fn reload_config(config: &Config) -> Result<ExitCode> {
    let (code, body) = control::request(
        &config.server.control_socket,
        "POST",
        "/config/reload",
        None,
        CLIENT_TIMEOUT,
    )?;
    if code != 200 {
        eprintln!(
            "error: {}",
            body["error"].as_str().unwrap_or("config reload refused")
        );
        return Ok(ExitCode::FAILURE);
    }
    let list = |key: &str| {
        let names: Vec<&str> = body[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    println!(
        "config reloaded: added {}; removed {}; changed {}; routes {}",
        list("added"),
        list("removed"),
        list("changed"),
        if body["routes_changed"] == true {
            "replaced"
        } else {
            "unchanged"
        }
    );
    let failures = list("failures");
    if failures != "none" {
        eprintln!("error: applying it partly failed: {failures}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn reload(config: &Config, id: &str) -> Result<ExitCode> {
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
            "reloaded {id}: generation {} ({}) -> {} ({}) in {:.1} ms, calls held {:.2} ms (old stop {:.2} ms, new start {:.2} ms){unmapped}{lost}",
            generation(&body["old_generation"]),
            body["old_version"].as_str().unwrap_or("-"),
            generation(&body["new_generation"]),
            body["new_version"].as_str().unwrap_or("?"),
            body["elapsed_ms"].as_f64().unwrap_or(0.0),
            body["held_ms"].as_f64().unwrap_or(0.0),
            body["stop_ms"].as_f64().unwrap_or(0.0),
            body["start_ms"].as_f64().unwrap_or(0.0),
            lost = if body["state_lost"] == true {
                "; the old generation was hung: its state was lost"
            } else {
                ""
            },
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

pub(super) fn hotreload_switch(config: &Config, id: &str, method: &str) -> Result<ExitCode> {
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

pub(super) fn hotreload_status(config: &Config, json: bool) -> Result<ExitCode> {
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
pub(super) fn live_status(config: &Config, id: &str) -> Option<serde_json::Value> {
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
