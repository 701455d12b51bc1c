//! Sends: through any platform, from HTTP clients, the control socket and routes. A send is
//! admitted by the journal first (nothing is sent that it could not record), loads the
//! platform on first use without blocking the runtime, and is retried on the serving
//! generation when a reload swapped the instance between lookup and call.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::Gateway;
use crate::{
    journal::{Durability, JournalError, Record, RecordKind},
    loader::CallError,
    message::Outbound,
    registry::{Instance, RegistryError},
};

/// Why a send failed. Each variant keeps its cause; [`crate::api`] alone turns one into an
/// HTTP status and the words a client sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The platform is not installed, failed to load or did not stop.
    #[error(transparent)]
    Platform(#[from] RegistryError),
    /// A reload held new calls at the door for longer than the platform's call timeout.
    #[error("platform `{platform}` was held by a reload for longer than {} ms", timeout.as_millis())]
    HeldByReload {
        /// The platform.
        platform: String,
        /// How long the send waited.
        timeout: Duration,
    },
    /// The task that loads the platform failed (it panicked).
    #[error("platform `{platform}`: the load task failed: {message}")]
    LoadTask {
        /// The platform.
        platform: String,
        /// The task's error.
        message: String,
    },
    /// The journal could not take the record: nothing was sent.
    #[error("platform `{platform}`: not sent: {source}")]
    NotAdmitted {
        /// The platform.
        platform: String,
        /// The journal's state.
        #[source]
        source: JournalError,
    },
    /// The call into the plugin failed.
    #[error("{platform}: {source}")]
    Call {
        /// The platform.
        platform: String,
        /// How it failed.
        #[source]
        source: CallError,
    },
    /// The platform cannot carry the message (a kind, a thread, a file), and its table does
    /// not ask for the text fallback.
    #[error(transparent)]
    Unsupported(#[from] crate::capabilities::Unsupported),
    /// The rate budget had no token for it within its call timeout.
    #[error("{platform}: over its rate budget; try again in {} ms", retry_after.as_millis())]
    RateLimited {
        /// The platform.
        platform: String,
        /// When a token will be there.
        retry_after: Duration,
    },
    /// Sent, but with `fsync` durability the journal could not record it: the answer must not
    /// claim it is kept, and a retry would send it twice.
    #[error("{platform}: sent as {message_id}, but the journal could not record it: {source}")]
    NotJournaled {
        /// The platform.
        platform: String,
        /// The platform's id of the sent message.
        message_id: String,
        /// The journal's error.
        #[source]
        source: JournalError,
    },
}

impl SendError {
    /// Whether the same send may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Platform(_) | SendError::NotJournaled { .. } | SendError::Unsupported(_) => {
                false
            }
            SendError::HeldByReload { .. }
            | SendError::RateLimited { .. }
            | SendError::LoadTask { .. }
            | SendError::NotAdmitted { .. } => true,
            SendError::Call { source, .. } => source.retryable(),
        }
    }

    /// How long the platform or its budget asked the sender to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::RateLimited { retry_after, .. } => Some(*retry_after),
            SendError::Call {
                source:
                    CallError::Plugin {
                        retry_after_ms: Some(ms),
                        ..
                    },
                ..
            } => Some(Duration::from_millis(u64::from(*ms))),
            _ => None,
        }
    }

    /// Whether sending it again cannot help: the platform refused it for what it is, not
    /// for its state.
    pub fn permanent(&self) -> bool {
        matches!(
            self,
            SendError::Unsupported(_)
                | SendError::Call {
                    source: CallError::Plugin {
                        retryable: false,
                        ..
                    },
                    ..
                }
        )
    }

    /// The metrics label of a failed call.
    fn label(&self) -> &'static str {
        match self {
            SendError::RateLimited { .. } => "rate_limited",
            SendError::Call { source, .. } => match source {
                CallError::Timeout { .. } => "timeout",
                CallError::Plugin { .. } => "error",
                CallError::Expired { .. } | CallError::QueueFull { .. } => "busy",
                _ => "unavailable",
            },
            _ => "unavailable",
        }
    }
}

/// A successful send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SendOk {
    /// The platform's id for the message.
    pub message_id: String,
    /// The platform.
    pub platform: String,
    /// The generation that sent it.
    pub generation: u64,
    /// The ids of the parts, in order, when the text was split under the platform's
    /// `max_text_len` (`message_id` is the first's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<String>>,
}

/// Who sends, which decides how long a send waits for its rate budget and for the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A client waiting for the answer: the budget is waited for within the call timeout
    /// (then 503 with `Retry-After`); with `fsync` the answer waits for the journal.
    Client,
    /// A route's lane (in memory): waits for the budget as long as it takes.
    Route,
    /// The outbox: waits for the budget as long as it takes; the record in the store is the
    /// durable one, so the journal's line is not waited for.
    Outbox,
}

impl Gateway {
    /// The delivery policy in force for `platform`: its table's `delivery` over its
    /// manifest's `[limits]`.
    pub fn delivery_policy(&self, platform: &str) -> crate::delivery::policy::Policy {
        let Ok(entry) = self.registry.entry(platform) else {
            return crate::delivery::policy::Limits::default().policy();
        };
        let table = entry.platform_config().map(|p| p.delivery.clone());
        table
            .unwrap_or_default()
            .over(&entry.manifest().limits)
            .policy()
    }

    /// The running instance of `platform`, loading it on first use (off the runtime's threads).
    pub async fn instance(self: &Arc<Self>, platform: &str) -> Result<Arc<Instance>, SendError> {
        if let Some(instance) = self.registry.running(platform) {
            if instance.crashed().is_none() {
                return Ok(instance);
            }
            // Its process died and the supervisor is restarting it (at once, or after a
            // backoff): wait for the new generation within the call's timeout rather than
            // fail at once. Past it, the call meets the crash (503, retryable).
            let entry = self.registry.entry(platform)?;
            let timeout = self.registry.call_timeout(entry);
            let crashed = instance.generation();
            drop(instance);
            let _ = tokio::time::timeout(timeout, entry.wait_replaced(crashed)).await;
            if let Some(instance) = self.registry.running(platform) {
                return Ok(instance);
            }
        }
        let entry = self.registry.entry(platform)?;
        // Held at the door by a reload: wait for the swap without taking a thread.
        if entry.is_held() {
            let timeout = self.registry.call_timeout(entry);
            if tokio::time::timeout(timeout, entry.wait_released())
                .await
                .is_err()
            {
                return Err(SendError::HeldByReload {
                    platform: platform.to_owned(),
                    timeout,
                });
            }
            if let Some(instance) = self.registry.running(platform) {
                return Ok(instance);
            }
        }
        let registry = Arc::clone(&self.registry);
        let id = platform.to_owned();
        let result = tokio::task::spawn_blocking(move || registry.instance(&id))
            .await
            .map_err(|e| SendError::LoadTask {
                platform: platform.to_owned(),
                message: e.to_string(),
            })?;
        let instance = result?;
        self.note_started(platform);
        Ok(instance)
    }

    /// Sends `message` through `platform`, recording it in the journal as `kind` (a routed
    /// record goes [`Via::Route`], the others [`Via::Client`]).
    pub async fn send(
        self: &Arc<Self>,
        platform: &str,
        message: Outbound,
        kind: RecordKind,
        route_from: Option<String>,
    ) -> Result<SendOk, SendError> {
        let via = if kind == RecordKind::Routed {
            Via::Route
        } else {
            Via::Client
        };
        self.send_via(platform, message, kind, route_from, via)
            .await
    }

    /// [`Gateway::send`], waiting for the budget and the journal as `via` says.
    pub async fn send_via(
        self: &Arc<Self>,
        platform: &str,
        message: Outbound,
        kind: RecordKind,
        route_from: Option<String>,
        via: Via,
    ) -> Result<SendOk, SendError> {
        // Nothing is sent that the journal could not record: the room for its record is
        // reserved before the plugin sees it.
        let reserved = Record::reserve_len(
            platform,
            &message.chat_id,
            &message.text,
            route_from.as_deref(),
        );
        let reservation =
            self.journal
                .admit(reserved)
                .await
                .map_err(|source| SendError::NotAdmitted {
                    platform: platform.to_owned(),
                    source,
                })?;
        let started = Instant::now();
        let (instance, result) = self.send_parts(platform, &message, via).await?;
        // While the call ran it counted in flight, which keeps idle unload away; the activity
        // clock starts again from its end.
        self.touch(platform);
        match result {
            Ok(ids) => {
                let receipt = crate::message::Receipt {
                    message_id: ids[0].clone(),
                };
                self.metrics.send(platform, "ok", started.elapsed());
                let kept = reservation.record(Record {
                    ts: hermes_plugin_api::now_ms(),
                    kind,
                    platform: platform.to_owned(),
                    chat_id: message.chat_id,
                    user: None,
                    text: message.text,
                    message_id: receipt.message_id.clone(),
                    generation: instance.generation(),
                    route_from,
                });
                let kept = match kept {
                    Ok(_) if via == Via::Outbox => Ok(()),
                    Ok(ticket) => self.journal.committed(ticket).await,
                    Err(e) => Err(e),
                };
                if let Err(source) = kept {
                    // The message is out; only the record is missing. With `fsync` the answer
                    // must not claim it is kept, and a retry would send it twice.
                    tracing::error!(platform, message_id = %receipt.message_id, error = %source, "a sent message was not journaled");
                    if self.journal.durability() == Durability::Fsync {
                        return Err(SendError::NotJournaled {
                            platform: platform.to_owned(),
                            message_id: receipt.message_id,
                            source,
                        });
                    }
                }
                Ok(SendOk {
                    message_id: receipt.message_id,
                    platform: platform.to_owned(),
                    generation: instance.generation(),
                    parts: (ids.len() > 1).then_some(ids),
                })
            }
            Err(source) => {
                let e = SendError::Call {
                    platform: platform.to_owned(),
                    source,
                };
                self.metrics.send(platform, e.label(), started.elapsed());
                Err(e)
            }
        }
    }

    /// A token of `platform`'s budget for `chat`, waiting up to `within` (as long as it takes
    /// when `None`), but never past the start of shutdown: a send waiting for its token would
    /// hold up the drain (a queued one stays queued and goes at the next start).
    async fn token(
        &self,
        platform: &str,
        chat: &str,
        policy: &crate::delivery::policy::Policy,
        within: Option<Duration>,
    ) -> Result<(), Duration> {
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            // A token that is there is taken, shutdown or not.
            biased;
            taken = self.outbox.budgets.take(platform, chat, policy, within) => taken,
            _ = shutdown.wait_for(|stopping| *stopping) => Err(Duration::ZERO),
        }
    }

    /// `message` fitted to the platform (split, or refused or turned into text where it lacks
    /// something) and sent part by part, in order, each within the rate budget; the ids of the
    /// parts sent. Each part that finds the instance swapped out by a reload (`Stopped`: the
    /// call never reached the plugin) goes again to the serving one.
    async fn send_parts(
        self: &Arc<Self>,
        platform: &str,
        message: &Outbound,
        via: Via,
    ) -> Result<(Arc<Instance>, Result<Vec<String>, CallError>), SendError> {
        let mut instance = self.instance(platform).await?;
        let entry = self.registry.entry(platform)?;
        let fallback = entry
            .platform_config()
            .map(|p| p.fallback)
            .unwrap_or_default();
        let parts = entry.manifest().capabilities.fit(
            platform,
            instance.level(),
            fallback,
            message.clone(),
        )?;
        let policy = self.delivery_policy(platform);
        let within = (via == Via::Client).then(|| self.registry.call_timeout(entry));
        let mut ids = Vec::with_capacity(parts.len());
        for part in &parts {
            if let Err(retry_after) = self.token(platform, &part.chat_id, &policy, within).await {
                if ids.is_empty() {
                    return Err(SendError::RateLimited {
                        platform: platform.to_owned(),
                        retry_after,
                    });
                }
                // Parts went out already: wait for the rest rather than leave it half sent
                // (at shutdown, the rest goes at once).
                let _ = self.token(platform, &part.chat_id, &policy, None).await;
            }
            let mut attempts = 0;
            let result = loop {
                let result = instance.send_async(part).await;
                attempts += 1;
                if result == Err(CallError::Stopped) && attempts < 5 {
                    instance = self.instance(platform).await?;
                    continue;
                }
                break result;
            };
            match result {
                Ok(receipt) => ids.push(receipt.message_id),
                Err(e) => return Ok((instance, Err(e))),
            }
        }
        Ok((instance, Ok(ids)))
    }
}
