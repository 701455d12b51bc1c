//! The webhook adapter: sends go out as incoming-webhook POSTs (Slack, Mattermost or Discord
//! format, chosen per target); inbound messages arrive on its own HTTP listener, signed.
//!
//! Config (`[platforms.webhook]`):
//! ```toml
//! listen = "127.0.0.1:9000"   # optional inbound listener
//! secret = "..."              # HMAC key for inbound (or WEBHOOK_SECRET); required with listen
//! max_retries = 3             # after the first attempt, on 5xx, 429 and network errors
//! timeout_ms = 5000           # per HTTP attempt
//! retry_budget_ms = 20000     # attempts and waits of one send, in all; keep it below the
//!                             # host's call_timeout_ms (30000 by default)
//! [[platforms.webhook.targets]]
//! chat = "ops"                # the chat id sends use
//! url = "https://hooks.slack.com/services/..."
//! format = "slack"            # slack | mattermost | discord | json
//! username = "hermes"         # optional display name (mattermost, discord)
//! ```
//!
//! Outbound: Slack, Mattermost and Discord incoming webhooks only post, so an edit, delete or
//! reaction for them is refused (naming the target's format); the `json` format carries every
//! kind as the gateway's JSON form of a message. A 2xx answer is a sent message. 5xx and network errors are retried with
//! exponential backoff (100 ms, 200 ms, 400 ms, ...); a 429 waits for its `Retry-After`
//! (seconds, at most 30) before the next attempt. Other 4xx answers are permanent errors. When
//! the retries run out, the error is retryable.
//!
//! Inbound: `POST /hooks/<chat>` with a JSON body `{"text": "...", "user": "..."}` (or any
//! kind: `{"kind": "reaction", "target_id": "...", "emoji": "👍"}`, the JSON form of a message
//! in `hermes_plugin_api::json`) and the
//! headers `X-Hermes-Timestamp: <Unix seconds>` and `X-Hermes-Signature: v1=<hex HMAC-SHA256
//! of "<timestamp>\n<METHOD>\n<path>\n<body>" with the secret>` (see `inbound`: the window
//! and replays). Answers: 204 delivered, 401 missing, bad, stale or replayed signature (never
//! delivered), 400 bad body, 404 another path, 405 another method, 413 over 64 KiB, 431 a head
//! over 16 KiB, 503 too busy.

mod inbound;
mod outbound;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use hermes_plugin_api::{
    Health, Host, MessageKind, OutboundMessage, Plugin, SendError, SendReceipt,
};
use serde::Deserialize;

/// `[platforms.webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Inbound listener address.
    #[serde(default)]
    pub listen: Option<String>,
    /// The HMAC key for inbound signatures.
    #[serde(default)]
    pub secret: Option<String>,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Timeout of one HTTP attempt.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The most one send may take, attempts and waits included.
    #[serde(default = "default_retry_budget")]
    pub retry_budget_ms: u64,
    /// Where sends go.
    #[serde(default)]
    pub targets: Vec<Target>,
}

fn default_retries() -> u32 {
    3
}
fn default_timeout() -> u64 {
    5000
}
fn default_retry_budget() -> u64 {
    20_000
}

/// One outbound webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The chat id that sends to it.
    pub chat: String,
    /// The webhook URL.
    pub url: String,
    /// The payload format.
    pub format: Format,
    /// A display name, where the format has one.
    #[serde(default)]
    pub username: Option<String>,
}

/// An incoming-webhook payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"text": ...}`.
    Slack,
    /// `{"text": ..., "username": ...}`.
    Mattermost,
    /// `{"content": ..., "username": ...}`.
    Discord,
    /// The message as JSON with its kind and every field (`hermes_plugin_api::json`): for a
    /// receiver of the gateway's own, which can edit, delete and react.
    Json,
}

/// A running webhook instance.
pub struct Webhook {
    config: Config,
    agent: ureq::Agent,
    stop: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
    listen_addr: Option<String>,
    sent: AtomicU64,
}

impl Plugin for Webhook {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        if let Some(listen) = &config.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|e| {
                format!("`listen`: {listen:?} is not an address like 127.0.0.1:9000: {e}")
            })?;
            let secret = config
                .secret
                .clone()
                .or_else(|| std::env::var("WEBHOOK_SECRET").ok());
            if secret.is_none_or(|s| s.len() < 16) {
                return Err("`secret`: with `listen`, a secret of at least 16 characters is required (or WEBHOOK_SECRET)".into());
            }
        }
        let mut chats = BTreeSet::new();
        for (i, target) in config.targets.iter().enumerate() {
            if target.chat.trim().is_empty() {
                return Err(format!("`targets[{i}].chat`: must not be empty"));
            }
            if !chats.insert(target.chat.as_str()) {
                return Err(format!(
                    "`targets[{i}].chat`: {:?} is used by another target",
                    target.chat
                ));
            }
            if !(target.url.starts_with("https://") || target.url.starts_with("http://"))
                || target.url.len() < 10
            {
                return Err(format!(
                    "`targets[{i}].url`: {:?} is not an http(s) URL",
                    target.url
                ));
            }
        }
        if config.timeout_ms == 0 {
            return Err("`timeout_ms`: at least 1".into());
        }
        if config.retry_budget_ms < config.timeout_ms {
            return Err("`retry_budget_ms`: at least `timeout_ms` (one attempt)".into());
        }
        if config.max_retries > 10 {
            return Err("`max_retries`: at most 10".into());
        }
        Ok(())
    }

    fn start(
        mut config: Config,
        host: Host,
        _previous: Option<hermes_plugin_api::State>,
    ) -> Result<Self, String> {
        if config.secret.is_none() {
            config.secret = std::env::var("WEBHOOK_SECRET").ok();
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_millis(config.timeout_ms))
            .user_agent(concat!("hermes-webhook/", env!("CARGO_PKG_VERSION")))
            .build();
        let stop = Arc::new(AtomicBool::new(false));
        let (listener, listen_addr) = match (&config.listen, &config.secret) {
            (Some(listen), Some(secret)) => {
                let (thread, addr) =
                    inbound::spawn(listen, secret.as_bytes().to_vec(), Arc::clone(&stop), host)?;
                (Some(thread), Some(addr))
            }
            _ => (None, None),
        };
        Ok(Webhook {
            config,
            agent,
            stop,
            listener,
            listen_addr,
            sent: AtomicU64::new(0),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let target = self
            .config
            .targets
            .iter()
            .find(|t| t.chat == message.chat_id)
            .ok_or_else(|| {
                SendError::permanent(format!("no webhook target for chat {:?}", message.chat_id))
            })?;
        if target.format != Format::Json && message.kind != MessageKind::Message {
            return Err(SendError::permanent(format!(
                "a {} cannot go to the {:?} incoming webhook of chat {:?} (it only posts); a target of format = \"json\" takes every kind",
                message.kind, target.format, target.chat
            )));
        }
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("webhook-{n}");
        outbound::post(
            &self.agent,
            target,
            &outbound::body(target, &message, &id),
            self.config.max_retries,
            std::time::Duration::from_millis(self.config.retry_budget_ms),
        )?;
        Ok(SendReceipt { message_id: id })
    }

    fn health(&self) -> Health {
        let listening = match &self.listen_addr {
            Some(addr) => format!("listening on {addr}"),
            None => "no inbound listener".into(),
        };
        Health {
            status: hermes_plugin_api::HealthStatus::Healthy,
            detail: format!("{} targets; {listening}", self.config.targets.len()),
        }
    }

    fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.listener.take() {
            thread
                .join()
                .map_err(|_| "the listener thread panicked".to_owned())?;
        }
        Ok(())
    }
}

hermes_plugin_api::export_plugin!(Webhook);
