//! A minimal hermes-host plugin, written as a third party would: it depends on
//! `hermes-plugin-api` only, implements `Plugin`, and exports it.
//!
//! Config (`[platforms.echo]`): `shout = true` upper-cases the echoes.

use std::sync::atomic::{AtomicU64, Ordering};

use hermes_plugin_api::{
    Host, InboundMessage, OutboundMessage, Plugin, SendError, SendReceipt, State,
};
use serde::Deserialize;

/// `[platforms.echo]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Upper-case the echoes.
    #[serde(default)]
    shout: bool,
}

/// A running echo instance.
pub struct Echo {
    shout: bool,
    host: Host,
    sent: AtomicU64,
}

impl Plugin for Echo {
    type Config = Config;

    fn start(config: Config, host: Host, _previous: Option<State>) -> Result<Self, String> {
        Ok(Echo {
            shout: config.shout,
            host,
            sent: AtomicU64::new(0),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let id = format!("echo-{}", self.sent.fetch_add(1, Ordering::Relaxed) + 1);
        let text = if self.shout {
            message.text.to_uppercase()
        } else {
            message.text
        };
        let echo = InboundMessage::new(message.chat_id, "echo", text, id.clone());
        self.host.deliver(&echo).map_err(SendError::retryable)?;
        Ok(SendReceipt { message_id: id })
    }

    fn stop(self) -> Result<(), String> {
        Ok(())
    }
}

hermes_plugin_api::export_plugin!(Echo);

#[cfg(test)]
mod tests {
    use hermes_plugin_api::testing::Harness;

    use super::*;

    #[test]
    fn echoes_and_shouts_when_asked() {
        let echo = Harness::<Echo>::start(serde_json::json!({})).unwrap();
        assert_eq!(echo.send_text("c", "hi").unwrap().message_id, "echo-1");
        let shout = Harness::<Echo>::start(serde_json::json!({ "shout": true })).unwrap();
        shout.send_text("c", "hi").unwrap();
        assert_eq!(echo.delivered()[0].text, "hi");
        assert_eq!(shout.delivered()[0].text, "HI");
        // An unknown key is refused, as the host refuses it.
        assert!(Harness::<Echo>::start(serde_json::json!({ "loud": true })).is_err());
    }
}
