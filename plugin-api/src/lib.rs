//! The plugin API of hermes-host: the stable ABI and the safe trait adapters implement.
//!
//! A plugin is a `cdylib` crate that implements [`Plugin`] and exports it with
//! [`export_plugin!`]. Everything that crosses the library boundary is defined in [`abi`] and
//! checked by the host before it calls anything; plugin authors never touch it.
//!
//! ```
//! use hermes_plugin_api::{
//!     Host, InboundMessage, OutboundMessage, Plugin, SendError, SendReceipt, State,
//! };
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     #[serde(default)]
//!     prefix: String,
//! }
//!
//! struct Echo {
//!     prefix: String,
//!     host: Host,
//! }
//!
//! impl Plugin for Echo {
//!     type Config = Config;
//!
//!     // `previous`: the state the last generation exported, on a reload.
//!     fn start(config: Config, host: Host, previous: Option<State>) -> Result<Self, String> {
//!         Ok(Echo { prefix: config.prefix, host })
//!     }
//!
//!     fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
//!         let text = format!("{}{}", self.prefix, message.text);
//!         let echo = InboundMessage::new(message.chat_id, "echo", text, "1");
//!         self.host.deliver(&echo).map_err(SendError::retryable)?;
//!         Ok(SendReceipt { message_id: "1".into() })
//!     }
//!
//!     fn stop(self) -> Result<(), String> {
//!         Ok(())
//!     }
//! }
//!
//! hermes_plugin_api::export_plugin!(Echo);
//! # fn main() {}
//! ```

pub mod abi;
#[allow(unsafe_code)]
mod export;
pub mod json;
pub mod log;
mod plugin;

/// This crate's version: what `hermes-host plugin new` depends on without `--api-path`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use export::Host;
/// Running a plugin in process without the host, for its unit tests (feature `testing`).
#[cfg(feature = "testing")]
pub use export::testing;
pub use plugin::{
    Attachment, DeliverError, Health, HealthStatus, InboundMessage, MessageKind, OutboundMessage,
    Plugin, ROUTED_USER_KEY, SendError, SendReceipt, State, now_ms,
};

#[doc(hidden)]
pub mod __private {
    pub use crate::export::header;
}
