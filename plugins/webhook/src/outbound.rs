//! Posting to incoming webhooks, with retries.

use std::time::Duration;

use hermes_plugin_api::{OutboundMessage, SendError};
use serde_json::json;

use crate::{Format, Target};

/// The JSON body `target`'s format wants for `message`, sent as `id`.
pub(crate) fn body(target: &Target, message: &OutboundMessage, id: &str) -> serde_json::Value {
    let text = &message.text;
    let mut body = match target.format {
        Format::Slack | Format::Mattermost => json!({ "text": text }),
        Format::Discord => json!({ "content": text }),
        Format::Json => return hermes_plugin_api::json::outbound_to_json(message, id),
    };
    if let (Some(name), Format::Mattermost | Format::Discord) = (&target.username, target.format) {
        body["username"] = json!(name);
    }
    body
}

/// The longest `Retry-After` honoured; beyond it the send fails (retryable) at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// POSTs `body` to `target`: 2xx is done; 5xx, 429 and network errors are retried, as long as
/// the whole send (attempts and waits) stays within `budget`, which the config keeps below the
/// host's call timeout: the send then fails (retryable) before the host gives up on the call.
pub(crate) fn post(
    agent: &ureq::Agent,
    target: &Target,
    body: &serde_json::Value,
    max_retries: u32,
    budget: Duration,
) -> Result<(), SendError> {
    let started = std::time::Instant::now();
    let payload = body.to_string();
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 0..=max_retries {
        let wait = match agent
            .post(&target.url)
            .set("Content-Type", "application/json")
            .send_string(&payload)
        {
            Ok(_) => return Ok(()),
            Err(ureq::Error::Status(429, response)) => {
                let after = response
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(backoff);
                last = format!("429 Too Many Requests (Retry-After {after:?})");
                if after > MAX_RETRY_AFTER {
                    return Err(SendError::retryable(format!("{}: {last}", target.chat)));
                }
                after
            }
            Err(ureq::Error::Status(code, response)) if code >= 500 => {
                last = format!("HTTP {code} {}", response.status_text());
                backoff
            }
            Err(ureq::Error::Status(code, response)) => {
                let detail: String = response
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                return Err(SendError::permanent(format!(
                    "{}: HTTP {code}: {detail}",
                    target.chat
                )));
            }
            Err(ureq::Error::Transport(e)) => {
                last = e.to_string();
                backoff
            }
        };
        if started.elapsed() + wait > budget {
            return Err(SendError::retryable(format!(
                "{}: gave up after {} attempts ({last}): the next would pass the {} ms retry budget",
                target.chat,
                attempt + 1,
                budget.as_millis()
            )));
        }
        if attempt < max_retries {
            tracing::debug!(chat = %target.chat, attempt, "webhook failed ({last}); retrying in {wait:?}");
            std::thread::sleep(wait);
            backoff *= 2;
        }
    }
    Err(SendError::retryable(format!(
        "{}: gave up after {} attempts: {last}",
        target.chat,
        max_retries + 1
    )))
}
