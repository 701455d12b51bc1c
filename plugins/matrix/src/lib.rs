//! The Matrix adapter: a client of the client-server API.
//!
//! Config (`[platforms.matrix]`): `homeserver` (base URL), `user` with `password` (or
//! `MATRIX_PASSWORD`), or `access_token` (or `MATRIX_ACCESS_TOKEN`); `rooms` (ids or aliases
//! to join); `auto_join = true` (accept invites); `store_path` (a file keeping the device id and
//! the sync position across restarts); `sync_timeout_ms = 3000`; `send_budget_ms = 20000`.
//!
//! A chat id is a room id (`!id:server`) or an alias (`#name:server`, resolved once). One thread
//! long-polls `/sync`: the first sync without a stored position only takes the position (history
//! is never replayed); later ones deliver `m.room.message` events (`m.text`, `m.notice`,
//! `m.emote`) of joined rooms, except its own. The position crosses reloads (exported state)
//! and restarts (`store_path`). Sends run on the calling worker: a transaction id per message,
//! the same on every retry (so a retry never posts twice), `M_LIMIT_EXCEEDED`'s `retry_after_ms`
//! honoured, within `send_budget_ms` (past it, the error carries it as `retry_after_ms`); a
//! send with an idempotency key uses it as its transaction id. Every kind travels in Matrix's
//! own form, both ways ([`events`]: edits, redactions, reactions, replies, threads).
//! End-to-end encrypted rooms are not supported; attachments are not carried yet.

mod api;
mod events;
mod sync;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hermes_plugin_api::{
    Health, HealthStatus, Host, MessageKind, OutboundMessage, Plugin, SendError, SendReceipt, State,
};
use serde::{Deserialize, Serialize};

pub use api::{ApiError, Client};

/// `[platforms.matrix]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-server API's base URL.
    pub homeserver: String,
    /// `@user:server` or the local part, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// The password; `MATRIX_PASSWORD` when absent.
    #[serde(default)]
    pub password: Option<String>,
    /// An access token instead of a login; `MATRIX_ACCESS_TOKEN` when absent.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Rooms to join: ids or aliases.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Accept invites.
    #[serde(default = "yes")]
    pub auto_join: bool,
    /// Where the device id and the sync position are kept across restarts.
    #[serde(default)]
    pub store_path: Option<String>,
    /// How long one `/sync` waits for news (also the longest `stop` waits for it).
    #[serde(default = "default_sync_timeout")]
    pub sync_timeout_ms: u64,
    /// How long one send may take, retries included.
    #[serde(default = "default_send_budget")]
    pub send_budget_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_sync_timeout() -> u64 {
    3000
}
fn default_send_budget() -> u64 {
    20_000
}

/// What crosses a reload (exported state) and, but the token, a restart (`store_path`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    #[serde(default)]
    pub(crate) device_id: Option<String>,
    #[serde(default)]
    pub(crate) since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) access_token: Option<String>,
}

/// What the sync thread reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    pub(crate) connected: bool,
    pub(crate) user_id: String,
    pub(crate) last_sync: Option<Instant>,
    pub(crate) last_error: Option<String>,
    pub(crate) syncs: u64,
}

/// State shared between the plugin's calls and its sync thread.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stop: AtomicBool,
    /// The logged-in client; `None` until the login (or after the token was refused).
    pub(crate) client: RwLock<Option<Arc<Client>>>,
    pub(crate) status: Mutex<Status>,
    pub(crate) saved: Mutex<Saved>,
    /// Aliases resolved so far.
    pub(crate) aliases: Mutex<HashMap<String, String>>,
}

/// A running Matrix instance.
pub struct Matrix {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Transaction ids: this instance's start and a counter.
    txn_prefix: String,
    txn: AtomicU64,
    /// Our reactions' events by (room, target, emoji), to take one back by redacting it; at
    /// most [`REACTIONS_KEPT`], forgotten on a reload (taking back an older one then fails).
    reactions: Mutex<HashMap<(String, String, String), String>>,
}

const STATE_SCHEMA: u32 = 1;

/// A room id (`!id`, with `:server` before room version 12) or an alias (`#name:server`).
fn is_room(text: &str) -> bool {
    let ok = |rest: &str| !rest.is_empty() && !rest.contains(char::is_whitespace);
    match text.split_at_checked(1) {
        Some(("!", rest)) => ok(rest),
        Some(("#", rest)) => {
            ok(rest)
                && rest
                    .split_once(':')
                    .is_some_and(|(n, s)| !n.is_empty() && !s.is_empty())
        }
        _ => false,
    }
}

impl Plugin for Matrix {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        let url_ok = ["http://", "https://"]
            .iter()
            .any(|s| config.homeserver.starts_with(s) && config.homeserver.len() > s.len());
        if !url_ok {
            return Err(format!(
                "`homeserver`: {:?} must be an http:// or https:// URL",
                config.homeserver
            ));
        }
        if config.access_token.is_none() && config.user.is_none() {
            return Err("`user`: required (with `password`) unless `access_token` is set".into());
        }
        if let Some(bad) = config.rooms.iter().find(|r| !is_room(r)) {
            return Err(format!(
                "`rooms`: {bad:?} is not a room id (!id) or alias (#name:server)"
            ));
        }
        if config.sync_timeout_ms == 0 || config.sync_timeout_ms > 60_000 {
            return Err("`sync_timeout_ms`: 1 to 60000".into());
        }
        if config.send_budget_ms == 0 {
            return Err("`send_budget_ms`: must be at least 1".into());
        }
        Ok(())
    }

    fn start(mut config: Config, host: Host, previous: Option<State>) -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        config.password = config.password.or_else(|| env("MATRIX_PASSWORD"));
        config.access_token = config.access_token.or_else(|| env("MATRIX_ACCESS_TOKEN"));
        if config.access_token.is_none() && config.password.is_none() {
            return Err("`password`: not set (nor MATRIX_PASSWORD, nor an access token)".into());
        }
        // The previous generation's session and position, else the store's.
        let saved = match previous.filter(|s| s.schema == STATE_SCHEMA) {
            Some(state) => serde_json::from_slice(&state.bytes).unwrap_or_default(),
            None => sync::load_store(&config),
        };
        let shared = Arc::new(Shared {
            config,
            stop: AtomicBool::new(false),
            client: RwLock::new(None),
            status: Mutex::new(Status::default()),
            saved: Mutex::new(saved),
            aliases: Mutex::new(HashMap::new()),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("matrix-sync".into())
                .spawn(move || sync::run(&shared, &host))
                .map_err(|e| format!("cannot start the sync thread: {e}"))?
        };
        Ok(Matrix {
            shared,
            thread: Some(thread),
            txn_prefix: format!("hermes{}", hermes_plugin_api::now_ms()),
            txn: AtomicU64::new(0),
            reactions: Mutex::new(HashMap::new()),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let client = self
            .shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // While the homeserver is away (the last sync failed), sends fail at once.
        let status = self.status();
        let Some(client) = client.filter(|_| status.connected) else {
            return Err(SendError::retryable(format!(
                "not connected to {}: {}",
                self.shared.config.homeserver,
                status.last_error.unwrap_or_else(|| "connecting".into())
            )));
        };
        let chat = message.chat_id.trim();
        if !is_room(chat) {
            return Err(SendError::permanent(format!(
                "{chat:?} is not a room id (!id) or alias (#name:server)"
            )));
        }
        let n = self.txn.fetch_add(1, Ordering::Relaxed) + 1;
        // The client's idempotency key as the transaction id: a resend of the same message,
        // even from another generation with the same session, is posted once.
        let txn = match &message.idempotency_key {
            Some(key) => format!("idem-{key}"),
            None => format!("{}-{n}", self.txn_prefix),
        };
        let deadline = Instant::now() + Duration::from_millis(self.shared.config.send_budget_ms);
        let mut wait = Duration::from_millis(250);
        let mut requests = None;
        loop {
            let attempt = self.room_id(&client, chat).and_then(|room| {
                let requests = match &requests {
                    Some(r) => r,
                    None => requests.insert(
                        events::outbound(&message, &room, |room, target, emoji| {
                            self.own_reaction(room, target, emoji)
                        })
                        .map_err(|message| ApiError {
                            message,
                            retryable: false,
                            retry_after: None,
                            unauthorized: false,
                        })?,
                    ),
                };
                // Each request its own transaction id, the same on every retry: a retry after
                // the second of three never posts the first again.
                let mut first = None;
                for (i, request) in requests.iter().enumerate() {
                    let txn = if i == 0 {
                        txn.clone()
                    } else {
                        format!("{txn}-{i}")
                    };
                    let id = client.perform(&room, &txn, request)?;
                    first.get_or_insert(id);
                }
                let id = first.unwrap_or_default();
                if message.kind == MessageKind::Reaction {
                    self.note_reaction(&room, &message, &id);
                }
                Ok(id)
            });
            match attempt {
                Ok(event_id) => {
                    return Ok(SendReceipt {
                        message_id: event_id,
                    });
                }
                Err(e) => {
                    let pause = e.retry_after.unwrap_or(wait);
                    if !e.retryable || Instant::now() + pause > deadline {
                        return Err(match (e.retryable, e.retry_after) {
                            (true, Some(after)) => SendError::retryable(e.message)
                                .retry_after(u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
                            (true, None) => SendError::retryable(e.message),
                            (false, _) => SendError::permanent(e.message),
                        });
                    }
                    // The same transaction id: the homeserver posts it once however often
                    // it arrives.
                    tracing::info!(txn = %txn, wait_ms = pause.as_millis() as u64, error = %e.message, "matrix: send retried");
                    std::thread::sleep(pause);
                    wait = (wait * 2).min(Duration::from_secs(4));
                }
            }
        }
    }

    fn health(&self) -> Health {
        let status = self.status();
        match (status.connected, status.last_sync) {
            (true, Some(at)) => Health {
                status: HealthStatus::Healthy,
                detail: format!(
                    "syncing as {} (sync {}, last {} ms ago)",
                    status.user_id,
                    status.syncs,
                    at.elapsed().as_millis()
                ),
            },
            _ => Health::unhealthy(format!(
                "not connected to {}: {}",
                self.shared.config.homeserver,
                status.last_error.unwrap_or_else(|| "connecting".into())
            )),
        }
    }

    fn export_state(&self) -> Option<State> {
        let mut saved = self
            .shared
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // The next generation reuses the session instead of logging in again.
        saved.access_token = self
            .shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|c| c.token.clone());
        Some(State {
            schema: STATE_SCHEMA,
            bytes: serde_json::to_vec(&saved).ok()?,
        })
    }

    fn stop(mut self) -> Result<(), String> {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| "the sync thread panicked".to_owned())?;
        }
        Ok(())
    }
}

/// Our own reactions kept to take back, at most.
const REACTIONS_KEPT: usize = 4096;

impl Matrix {
    /// The event of a reaction we sent: `emoji` on `target` in `room`.
    fn own_reaction(&self, room: &str, target: &str, emoji: &str) -> Option<String> {
        self.reactions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(room.to_owned(), target.to_owned(), emoji.to_owned()))
            .cloned()
    }

    /// Remembers a reaction we sent (or forgets one taken back).
    fn note_reaction(&self, room: &str, message: &OutboundMessage, event_id: &str) {
        let key = (
            room.to_owned(),
            message.target_id.clone().unwrap_or_default(),
            message.emoji.clone().unwrap_or_default(),
        );
        let mut reactions = self.reactions.lock().unwrap_or_else(|e| e.into_inner());
        if message.remove {
            reactions.remove(&key);
            return;
        }
        if reactions.len() >= REACTIONS_KEPT {
            reactions.clear();
        }
        reactions.insert(key, event_id.to_owned());
    }

    fn status(&self) -> Status {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A room id as is; an alias resolved once.
    fn room_id(&self, client: &Client, chat: &str) -> Result<String, ApiError> {
        if chat.starts_with('!') {
            return Ok(chat.to_owned());
        }
        if let Some(id) = self
            .shared
            .aliases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(chat)
        {
            return Ok(id.clone());
        }
        let id = client.resolve(chat)?;
        self.shared
            .aliases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chat.to_owned(), id.clone());
        Ok(id)
    }
}

hermes_plugin_api::export_plugin!(Matrix);
