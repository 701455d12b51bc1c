//! Rate budgets: a token bucket per platform and one per chat, shared by direct and queued
//! sends, so the gateway never outruns what a platform allows however its sends arrive (one
//! budget, not a throttle per path each sized to the limit).
//!
//! A send takes one token from its platform's bucket and one from its chat's (a long text
//! split into parts takes one per part). When either is empty, it learns how long until both
//! have one: a queued send waits that long; a direct send waits within its call timeout, then
//! is answered 503 with `Retry-After`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::policy::{Policy, Rate};

/// Chats' buckets kept per platform before full ones are forgotten.
const MAX_CHAT_BUCKETS: usize = 4096;

/// How early a token may be taken: the runtime's timer wakes a sleeper up to a millisecond
/// late, so a send that waited for its token is let through this much before the token is
/// whole, and the bucket goes that little into debt (paid by the next wait). Without it, a
/// budget of 50/s with a burst of 1 delivered 47/s (every 20 ms wait took 21 ms).
const EARLY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    /// Refilled up to `now`, and reset when the rate in force changed.
    fn refill(&mut self, rate: Rate, now: Instant) {
        if self.rate != rate {
            *self = Bucket::new(rate, now);
            return;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// How long until it holds one token, less [`EARLY`].
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate.per_sec).saturating_sub(EARLY)
    }
}

#[derive(Debug, Default)]
struct PlatformBuckets {
    platform: Option<Bucket>,
    chats: HashMap<String, Bucket>,
}

/// Every platform's budget.
#[derive(Debug, Default)]
pub struct Budgets {
    platforms: Mutex<HashMap<String, PlatformBuckets>>,
}

impl Budgets {
    /// Takes a token for a send to `platform`/`chat` under `policy`, or says how long until
    /// one is there (nothing is taken then).
    pub fn try_take(&self, platform: &str, chat: &str, policy: &Policy) -> Result<(), Duration> {
        if policy.platform.is_none() && policy.chat.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let mut platforms = self.platforms.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = platforms.entry(platform.to_owned()).or_default();
        let mut wait = Duration::ZERO;
        if let Some(rate) = policy.platform {
            let bucket = buckets
                .platform
                .get_or_insert_with(|| Bucket::new(rate, now));
            bucket.refill(rate, now);
            wait = wait.max(bucket.wait());
        }
        if let Some(rate) = policy.chat {
            if buckets.chats.len() >= MAX_CHAT_BUCKETS && !buckets.chats.contains_key(chat) {
                buckets.chats.retain(|_, b| {
                    b.refill(rate, now);
                    b.tokens < b.rate.burst
                });
            }
            let bucket = buckets
                .chats
                .entry(chat.to_owned())
                .or_insert_with(|| Bucket::new(rate, now));
            bucket.refill(rate, now);
            wait = wait.max(bucket.wait());
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(bucket) = &mut buckets.platform {
            bucket.tokens -= 1.0;
        }
        if policy.chat.is_some()
            && let Some(bucket) = buckets.chats.get_mut(chat)
        {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }

    /// Takes a token, waiting for one; past `within` (when given) gives up and says how long
    /// the caller should wait before asking again.
    pub async fn take(
        &self,
        platform: &str,
        chat: &str,
        policy: &Policy,
        within: Option<Duration>,
    ) -> Result<(), Duration> {
        let deadline = within.map(|d| Instant::now() + d);
        loop {
            match self.try_take(platform, chat, policy) {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    if let Some(deadline) = deadline
                        && Instant::now() + wait > deadline
                    {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Tokens in each platform's own bucket now (the budget's headroom), for metrics.
    pub fn headroom(&self) -> Vec<(String, f64)> {
        let now = Instant::now();
        let mut platforms = self.platforms.lock().unwrap_or_else(|e| e.into_inner());
        platforms
            .iter_mut()
            .filter_map(|(id, b)| {
                let bucket = b.platform.as_mut()?;
                let rate = bucket.rate;
                bucket.refill(rate, now);
                Some((id.clone(), bucket.tokens))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::policy::{Limits, Policy};

    #[test]
    fn a_chat_budget_binds_inside_the_platform_budget() {
        let policy = Limits {
            rate_per_sec: Some(1000.0),
            burst: Some(3),
            per_chat_rate_per_sec: Some(0.001),
            per_chat_burst: Some(1),
            ..Limits::default()
        }
        .policy();
        let policy = Policy {
            platform: policy.platform.map(|r| Rate {
                per_sec: 100.0,
                ..r
            }),
            ..policy
        };
        let budgets = Budgets::default();
        assert_eq!(budgets.try_take("p", "a", &policy), Ok(()));
        // Chat a is spent for ~1000 s; chat b still has its token, and the platform its own.
        let wait = budgets.try_take("p", "a", &policy).unwrap_err();
        assert!(wait > Duration::from_secs(900), "{wait:?}");
        assert_eq!(budgets.try_take("p", "b", &policy), Ok(()));
        assert_eq!(budgets.try_take("p", "c", &policy), Ok(()));
        // The platform's burst of 3 is spent: a fourth chat waits for its token (10 ms at
        // 100/s, less the millisecond a timer may be late).
        let wait = budgets.try_take("p", "d", &policy).unwrap_err();
        assert!(
            wait > Duration::from_millis(5) && wait <= Duration::from_millis(9),
            "{wait:?}"
        );
        // Without a budget nothing is counted.
        assert_eq!(
            budgets.try_take("q", "a", &Limits::default().policy()),
            Ok(())
        );
    }
}
