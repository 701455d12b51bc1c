//! `hermes-host plugin new <id>`: writes a plugin crate that builds, passes its own tests and
//! serves with its dev config, with no edits.
//!
//! The crate is its own workspace (an empty `[workspace]` table), so it builds wherever it is
//! put. Its folder is also a plugin folder (`plugin.toml` at its root), and its `hermes.toml`
//! lists that folder itself under `[plugins] dirs`, with `target/debug` as the library dir
//! (`$CARGO_TARGET_DIR/debug` when that is set), on a loopback port free when it was written.
//! Every valid id gives a crate that compiles: the names in the code are derived, never the id
//! itself (see [`scaffold`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::manifest::valid_id;

/// What `plugin new` wrote.
#[derive(Debug)]
pub struct Scaffolded {
    /// The crate's folder.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<&'static str>,
}

/// Writes the crate for plugin `id` into `dir`, depending on the plugin API at `api_path` (a
/// path dependency) or, without one, on the crates.io release of the same version.
pub fn scaffold(id: &str, dir: &Path, api_path: Option<&Path>) -> Result<Scaffolded> {
    if !valid_id(id) {
        bail!(
            "`{id}` is not a valid plugin id: lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most 64"
        );
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{}: the folder exists and is not empty; choose another with --dir",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
    }
    let api_dependency = match api_path {
        Some(path) => {
            let path = std::path::absolute(path)
                .with_context(|| format!("--api-path {}", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "--api-path {}: no Cargo.toml there; give the hermes-plugin-api crate's folder",
                    path.display()
                );
            }
            format!("path = {:?}", path.display().to_string())
        }
        None => format!("version = \"{}\"", hermes_plugin_api::VERSION),
    };
    // The crate, its library and its type are named from the id so that every valid id gives
    // a crate that compiles: `hermes-platform-<id>` (a package name may not start with a digit
    // or be `self`), `hermes_platform_<id>` and `<Id>Platform` (never one of the names the
    // template imports, such as `Host`, `State`, `Plugin` or `Config`).
    let package = format!("hermes-platform-{id}");
    let lib = package.replace('-', "_");
    let camel: String = id
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let type_name = if camel.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Platform{camel}")
    } else {
        format!("{camel}Platform")
    };
    let port = free_port();
    let library_dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        // cargo builds into $CARGO_TARGET_DIR, not the crate's target/: look there.
        Some(target) => std::path::absolute(PathBuf::from(target))
            .context("CARGO_TARGET_DIR")?
            .join("debug")
            .display()
            .to_string(),
        None => "target/debug".to_owned(),
    };
    let fill = |template: &str| {
        template
            .replace("__ID__", id)
            .replace("__PACKAGE__", &package)
            .replace("__LIB__", &lib)
            .replace("__TYPE__", &type_name)
            .replace("__API__", &api_dependency)
            .replace("__PORT__", &port.to_string())
            .replace("__LIBRARY_DIR__", &format!("{library_dir:?}"))
    };
    let files: [(&'static str, &str); 6] = [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", LIB_RS),
        ("plugin.toml", PLUGIN_TOML),
        ("hermes.toml", HERMES_TOML),
        ("README.md", README_MD),
        (".gitignore", GITIGNORE),
    ];
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("{}", dir.display()))?;
    for (name, template) in files {
        let path = dir.join(name);
        std::fs::write(&path, fill(template)).with_context(|| format!("{}", path.display()))?;
    }
    Ok(Scaffolded {
        dir: dir.to_owned(),
        files: files.iter().map(|(name, _)| *name).collect(),
    })
}

/// A port free on loopback now, for the dev config (8650 when none can be had): several
/// scaffolded plugins, each served on its own, do not collide.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(8650, |a| a.port())
}

const CARGO_TOML: &str = r#"[package]
name = "__PACKAGE__"
version = "0.1.0"
edition = "2024"
publish = false

# Its own workspace: it builds wherever it is put.
[workspace]

[lib]
name = "__LIB__"
crate-type = ["cdylib", "rlib"]

[dependencies]
hermes-plugin-api = { __API__ }
serde = { version = "1", features = ["derive"] }

[dev-dependencies]
# `hermes_plugin_api::testing`: the unit tests run the plugin in process, without the host.
hermes-plugin-api = { __API__, features = ["testing"] }
serde_json = "1"
"#;

const LIB_RS: &str = r#"//! The `__ID__` platform for hermes-host.
//!
//! This scaffold answers every send by delivering it back as an inbound message (as the
//! loopback adapter does): replace `send` with a call to your network, and deliver what
//! arrives from it with `Host::deliver`, from a thread `start` spawns and `stop` joins.
//!
//! Config (`[platforms.__ID__]` in hermes.toml): `greeting`, a prefix for the echoes.

use std::sync::atomic::{AtomicU64, Ordering};

use hermes_plugin_api::{
    Host, InboundMessage, OutboundMessage, Plugin, SendError, SendReceipt, State,
};
use serde::Deserialize;

/// `[platforms.__ID__]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Put before every echoed text.
    #[serde(default = "default_greeting")]
    pub greeting: String,
}

fn default_greeting() -> String {
    "echo: ".to_owned()
}

/// A running instance: one per generation; a reload starts a new one.
pub struct __TYPE__ {
    config: Config,
    host: Host,
    sent: AtomicU64,
}

impl Plugin for __TYPE__ {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        if config.greeting.len() > 100 {
            return Err("`greeting` is at most 100 bytes".to_owned());
        }
        Ok(())
    }

    fn start(config: Config, host: Host, previous: Option<State>) -> Result<Self, String> {
        // The previous generation's state, after a reload; `None` on a first start.
        let sent = previous
            .and_then(|s| s.bytes.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        Ok(__TYPE__ {
            config,
            host,
            sent: AtomicU64::new(sent),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("__ID__-{n}");
        let text = echo(&self.config, &message.text);
        let inbound = InboundMessage::new(message.chat_id, "__ID__", text, id.clone());
        self.host.deliver(&inbound).map_err(SendError::retryable)?;
        Ok(SendReceipt { message_id: id })
    }

    fn export_state(&self) -> Option<State> {
        Some(State {
            schema: 1,
            bytes: self.sent.load(Ordering::Relaxed).to_le_bytes().to_vec(),
        })
    }

    fn stop(self) -> Result<(), String> {
        // Join every thread `start` spawned here: the library is unloaded after `stop`.
        Ok(())
    }
}

/// The text an echo carries.
pub fn echo(config: &Config, text: &str) -> String {
    format!("{}{text}", config.greeting)
}

hermes_plugin_api::export_plugin!(__TYPE__);

#[cfg(test)]
mod tests {
    use hermes_plugin_api::testing::Harness;

    use super::*;

    #[test]
    fn a_send_comes_back_as_an_echo_and_the_count_survives_a_reload() {
        let plugin = Harness::<__TYPE__>::start(serde_json::json!({ "greeting": "> " })).unwrap();
        let receipt = plugin.send_text("lobby", "hi").unwrap();
        assert_eq!(receipt.message_id, "__ID__-1");
        let echo = &plugin.delivered()[0];
        assert_eq!((echo.chat_id.as_str(), echo.text.as_str()), ("lobby", "> hi"));

        // A reload hands the exported state to the next generation's `start`.
        let plugin = plugin.reload(serde_json::json!({})).unwrap();
        assert_eq!(plugin.generation(), 2);
        assert_eq!(plugin.send_text("lobby", "again").unwrap().message_id, "__ID__-2");
        plugin.stop().unwrap();
    }

    #[test]
    fn an_echo_carries_the_greeting() {
        let config = Config {
            greeting: "hi ".to_owned(),
        };
        assert_eq!(echo(&config, "there"), "hi there");
        assert!(__TYPE__::validate_config(&config).is_ok());
        let long = Config {
            greeting: "x".repeat(101),
        };
        assert!(__TYPE__::validate_config(&long).is_err());
    }
}
"#;

const PLUGIN_TOML: &str = r#"[plugin]
id = "__ID__"
name = "__TYPE__"
kind = "platform"
version = "0.1.0"
api = 1
# cargo writes lib__LIB__.so (a `-` in the crate name becomes `_`).
library = "__LIB__"
description = "The __ID__ platform"
install_hint = "cargo build"
"#;

const HERMES_TOML: &str = r#"# A dev gateway for this plugin alone: `hermes-host -c hermes.toml serve --dev`.
# Relative paths are relative to this file.

[server]
listen = "127.0.0.1:__PORT__"
control_socket = ".hermes/control.sock"

[plugins]
# This folder is itself the plugin folder (plugin.toml is here).
dirs = ["."]
# Where cargo writes the library ($CARGO_TARGET_DIR/debug when it was set at `plugin new`).
library_dirs = [__LIBRARY_DIR__]
state_dir = ".hermes"

[hotreload]
allowed = true

[platforms.__ID__]
start = "eager"
greeting = "echo: "
"#;

const README_MD: &str = r#"# __ID__

A hermes-host platform plugin.

```sh
cargo test                                  # unit tests
cargo build                                 # target/debug/lib__LIB__.so
hermes-host -c hermes.toml plugin check __ID__ --start
hermes-host -c hermes.toml serve --dev      # http://127.0.0.1:__PORT__
hermes-host -c hermes.toml plugin hotreload-enable __ID__   # then every `cargo build` reloads it
curl -s -X POST 127.0.0.1:__PORT__/api/platforms/__ID__/send -H 'Content-Type: application/json' -d '{"chat_id":"c","text":"hi"}'
```

`src/lib.rs` says what to replace. `plugin.toml` is what the host reads before loading anything;
`hermes.toml` is a gateway serving this plugin alone.
"#;

const GITIGNORE: &str = "/target\n/.hermes\n";
