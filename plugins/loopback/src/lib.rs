//! The loopback adapter: every message sent through it comes back as an inbound message on the
//! same chat, from the user `loopback`. It needs nothing external, which makes it the fixture
//! for tests and benchmarks and the platform of the example config.
//!
//! Config (`[platforms.loopback]`, all optional):
//! - `user` (string, default `"loopback"`): the sender name of echoed messages.
//! - `prefix` (string, default `""`): put in front of every echoed text.
//!
//! Every kind (message, edit, delete, reaction) comes back as the same kind, with its reply,
//! thread, target, emoji and attachments. It counts the messages it echoed and hands the count
//! to the next generation on a reload.
//! Echoes carry `echo_count` and the library's `version` in their metadata. Building with
//! `HERMES_LOOPBACK_VERSION=x.y.z` set makes a library that reports that version instead of the
//! crate's: the tests and benchmarks reload between two such builds.

use std::sync::atomic::{AtomicU64, Ordering};

use hermes_plugin_api::{
    DeliverError, Host, InboundMessage, OutboundMessage, Plugin, SendError, SendReceipt, State,
};
use serde::Deserialize;

/// `[platforms.loopback]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_user")]
    user: String,
    #[serde(default)]
    prefix: String,
}

fn default_user() -> String {
    "loopback".to_owned()
}

/// A running loopback instance.
pub struct Loopback {
    config: Config,
    host: Host,
    echoed: AtomicU64,
}

/// This library's version: `HERMES_LOOPBACK_VERSION` at build time, else the crate's.
pub const VERSION: &str = match option_env!("HERMES_LOOPBACK_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The schema of the exported state: the echo counter as 8 little-endian bytes.
const STATE_SCHEMA: u32 = 1;

impl Plugin for Loopback {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        if config.user.trim().is_empty() {
            return Err("`user` must not be empty".into());
        }
        Ok(())
    }

    fn start(config: Config, host: Host, previous: Option<State>) -> Result<Self, String> {
        let echoed = match previous {
            None => 0,
            Some(state) => match (state.schema, <[u8; 8]>::try_from(state.bytes.as_slice())) {
                (STATE_SCHEMA, Ok(bytes)) => u64::from_le_bytes(bytes),
                (schema, _) => return Err(format!("unknown state schema {schema}")),
            },
        };
        // The host adds the platform and the generation to every plugin log line.
        tracing::debug!(echoed, "loopback started");
        Ok(Loopback {
            config,
            host,
            echoed: AtomicU64::new(echoed),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let n = self.echoed.fetch_add(1, Ordering::Relaxed) + 1;
        let message_id = format!("lb-{}-{n}", self.host.generation());
        let mut echo = InboundMessage::new(
            message.chat_id,
            self.config.user.clone(),
            format!("{}{}", self.config.prefix, message.text),
            message_id.clone(),
        );
        echo.metadata = message.metadata;
        echo.metadata.insert("echo_count".into(), n.into());
        echo.metadata.insert("version".into(), VERSION.into());
        if let Some(reply_to) = &message.reply_to {
            echo.metadata
                .insert("reply_to".into(), reply_to.clone().into());
        }
        // Every kind comes back as itself: an edit as an edit of the same target, a reaction
        // as that reaction; replies, threads and files as they went out.
        echo.kind = message.kind;
        echo.reply_to = message.reply_to;
        echo.thread_id = message.thread_id;
        echo.target_id = message.target_id;
        echo.emoji = message.emoji;
        echo.remove = message.remove;
        echo.attachments = message.attachments;
        if let Some(key) = message.idempotency_key {
            echo.metadata.insert("idempotency_key".into(), key.into());
        }
        // A refused echo (too large) fails for good; a stale instance's may pass on the next.
        self.host.deliver(&echo).map_err(|e| match e {
            DeliverError::Stale => SendError::retryable(e),
            DeliverError::Refused(reason) => SendError::permanent(reason),
        })?;
        Ok(SendReceipt { message_id })
    }

    fn export_state(&self) -> Option<State> {
        let n = self.echoed.load(Ordering::Relaxed);
        Some(State {
            schema: STATE_SCHEMA,
            bytes: n.to_le_bytes().to_vec(),
        })
    }

    fn stop(self) -> Result<(), String> {
        tracing::debug!(
            echoed = self.echoed.load(Ordering::Relaxed),
            "loopback stopped"
        );
        Ok(())
    }
}

hermes_plugin_api::export_plugin!(Loopback, version = VERSION);
