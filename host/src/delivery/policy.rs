//! A platform's delivery policy: its rate budget and how long a queued send is tried.
//!
//! The manifest's `[limits]` gives the platform's defaults (what its servers allow); the
//! config's `[platforms.<id>.delivery]` overrides them key by key. Both tables take the same
//! keys:
//!
//! ```toml
//! [platforms.irc.delivery]
//! rate_per_sec = 0.5          # the platform's budget; unlimited when neither table says
//! burst = 4                   # tokens the budget holds (default: 1, or the rate if above)
//! per_chat_rate_per_sec = 0.5 # each chat's budget, inside the platform's
//! per_chat_burst = 2          # default: `burst`
//! max_attempts = 10           # a queued send's calls before it is a dead letter
//! max_age_secs = 86400        # and its age
//! backoff_ms = 1000           # the first retry's wait, doubled each time...
//! max_backoff_ms = 300000     # ...up to this (a platform's retry_after_ms counts if longer)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[limits]` or `[platforms.<id>.delivery]`: each key optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Messages a second through the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// Tokens the platform's budget holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Messages a second to one chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_chat_rate_per_sec: Option<f64>,
    /// Tokens a chat's budget holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_chat_burst: Option<u32>,
    /// Calls a queued send gets before it is a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Age past which a queued send is a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// The first retry's wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// The longest wait between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
}

impl Limits {
    /// Checks the values; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, rate) in [
            ("rate_per_sec", self.rate_per_sec),
            ("per_chat_rate_per_sec", self.per_chat_rate_per_sec),
        ] {
            if let Some(rate) = rate
                && !(rate.is_finite() && rate > 0.0 && rate <= 1e6)
            {
                return Err((key, format!("{rate} is not a rate above 0 and up to 1e6")));
            }
        }
        for (key, n) in [
            ("burst", self.burst),
            ("per_chat_burst", self.per_chat_burst),
            ("max_attempts", self.max_attempts),
        ] {
            if n == Some(0) {
                return Err((key, "at least 1".to_owned()));
            }
        }
        for (key, n) in [
            ("max_age_secs", self.max_age_secs),
            ("backoff_ms", self.backoff_ms),
            ("max_backoff_ms", self.max_backoff_ms),
        ] {
            if n == Some(0) {
                return Err((key, "at least 1".to_owned()));
            }
        }
        Ok(())
    }

    /// This table's keys where it has them, `defaults`' elsewhere.
    pub fn over(&self, defaults: &Limits) -> Limits {
        Limits {
            rate_per_sec: self.rate_per_sec.or(defaults.rate_per_sec),
            burst: self.burst.or(defaults.burst),
            per_chat_rate_per_sec: self
                .per_chat_rate_per_sec
                .or(defaults.per_chat_rate_per_sec),
            per_chat_burst: self.per_chat_burst.or(defaults.per_chat_burst),
            max_attempts: self.max_attempts.or(defaults.max_attempts),
            max_age_secs: self.max_age_secs.or(defaults.max_age_secs),
            backoff_ms: self.backoff_ms.or(defaults.backoff_ms),
            max_backoff_ms: self.max_backoff_ms.or(defaults.max_backoff_ms),
        }
    }

    /// The policy these keys give, with the defaults for what they leave out.
    pub fn policy(&self) -> Policy {
        let burst = |rate: f64, burst: Option<u32>| {
            f64::from(burst.unwrap_or_else(|| rate.ceil().max(1.0) as u32))
        };
        let platform = self.rate_per_sec.map(|rate| Rate {
            per_sec: rate,
            burst: burst(rate, self.burst),
        });
        let chat = self.per_chat_rate_per_sec.map(|rate| Rate {
            per_sec: rate,
            burst: burst(rate, self.per_chat_burst.or(self.burst)),
        });
        Policy {
            platform,
            chat,
            max_attempts: self.max_attempts.unwrap_or(10),
            max_age: Duration::from_secs(self.max_age_secs.unwrap_or(86_400)),
            backoff: Duration::from_millis(self.backoff_ms.unwrap_or(1000)),
            max_backoff: Duration::from_millis(self.max_backoff_ms.unwrap_or(300_000)),
        }
    }
}

/// A token bucket's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added a second.
    pub per_sec: f64,
    /// Tokens it holds at most.
    pub burst: f64,
}

/// A platform's delivery policy in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The platform's budget; `None`: unlimited.
    pub platform: Option<Rate>,
    /// Each chat's budget; `None`: unlimited.
    pub chat: Option<Rate>,
    /// Calls before a dead letter.
    pub max_attempts: u32,
    /// Age before a dead letter.
    pub max_age: Duration,
    /// The first retry's wait.
    pub backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
}

impl Policy {
    /// The wait after `attempts` failed calls: the backoff doubled per attempt, or the
    /// platform's `retry_after` when longer, at most `max_backoff` (unless the platform asks
    /// for longer).
    pub fn retry_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1 << attempts.saturating_sub(1).min(20))
            .min(self.max_backoff);
        retry_after.map_or(doubled, |asked| asked.max(doubled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_overrides_the_manifest_key_by_key() {
        let manifest = Limits {
            rate_per_sec: Some(0.5),
            burst: Some(4),
            max_attempts: Some(3),
            ..Limits::default()
        };
        let config = Limits {
            rate_per_sec: Some(2.0),
            per_chat_rate_per_sec: Some(1.0),
            ..Limits::default()
        };
        let policy = config.over(&manifest).policy();
        assert_eq!(
            policy.platform,
            Some(Rate {
                per_sec: 2.0,
                burst: 4.0
            })
        );
        assert_eq!(policy.chat.map(|r| r.burst), Some(4.0));
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(Limits::default().policy().platform, None);
        let bad = Limits {
            rate_per_sec: Some(f64::NAN),
            ..Limits::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "rate_per_sec");
    }

    #[test]
    fn retries_back_off_and_honour_the_platform() {
        let policy = Limits {
            backoff_ms: Some(100),
            max_backoff_ms: Some(1000),
            ..Limits::default()
        }
        .policy();
        let ms = |n, after: Option<u64>| {
            policy
                .retry_delay(n, after.map(Duration::from_millis))
                .as_millis()
        };
        assert_eq!([ms(1, None), ms(2, None), ms(3, None)], [100, 200, 400]);
        assert_eq!(ms(30, None), 1000);
        assert_eq!(ms(1, Some(5000)), 5000);
        assert_eq!(ms(3, Some(50)), 400);
    }
}
