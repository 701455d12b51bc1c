//! The outbox's figures: attempts and settled deliveries (and inbound repeats dropped) counted
//! as they happen; queue depth,
//! the oldest record's age, dead letters and rate-budget headroom read at scrape time.

use std::collections::BTreeMap;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{Labels, bump, lock};
use crate::store::{DeliveryState, OutboxStats};

/// Counted as deliveries go.
#[derive(Default)]
pub(super) struct DeliveryCounters {
    attempts: std::sync::Mutex<BTreeMap<String, u64>>,
    sent: std::sync::Mutex<BTreeMap<String, u64>>,
    dead: std::sync::Mutex<BTreeMap<String, u64>>,
    duplicates: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// The outbox read at scrape time.
pub struct OutboxSnapshot {
    /// Per platform: queued records, the oldest's acceptance time, dead letters.
    pub stats: BTreeMap<String, OutboxStats>,
    /// Per platform with a budget: tokens in its bucket now.
    pub headroom: Vec<(String, f64)>,
}

impl super::Metrics {
    /// A queued send's call was made.
    pub fn delivery_attempt(&self, platform: &str) {
        bump(&self.delivery.attempts, platform);
    }

    /// An inbound message delivered before came again and was dropped.
    pub fn inbound_duplicate(&self, platform: &str) {
        bump(&self.delivery.duplicates, platform);
    }

    /// A queued send was sent or became a dead letter.
    pub fn delivery_settled(&self, platform: &str, state: DeliveryState) {
        match state {
            DeliveryState::Sent => bump(&self.delivery.sent, platform),
            DeliveryState::Dead => bump(&self.delivery.dead, platform),
            _ => 0,
        };
    }
}

pub(super) fn register(
    registry: &mut Registry,
    counters: &DeliveryCounters,
    outbox: Option<&OutboxSnapshot>,
) {
    for (name, help, values) in [
        (
            "hermes_delivery_attempts",
            "Calls made for queued sends, by platform",
            &counters.attempts,
        ),
        (
            "hermes_deliveries_sent",
            "Queued sends delivered, by platform",
            &counters.sent,
        ),
        (
            "hermes_deliveries_dead",
            "Queued sends that became dead letters, by platform",
            &counters.dead,
        ),
        (
            "hermes_inbound_duplicates",
            "Inbound messages dropped because they were delivered before (platforms with unique_ids)",
            &counters.duplicates,
        ),
    ] {
        let family = Family::<Labels, Counter>::default();
        for (platform, n) in lock(values).iter() {
            family
                .get_or_create(&vec![("platform", platform.clone())])
                .inc_by(*n);
        }
        registry.register(name, help, family);
    }
    let Some(outbox) = outbox else {
        return;
    };
    let now = hermes_plugin_api::now_ms();
    let depth = Family::<Labels, Gauge>::default();
    let age = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let dead = Family::<Labels, Gauge>::default();
    for (platform, stats) in &outbox.stats {
        let labels = vec![("platform", platform.clone())];
        depth.get_or_create(&labels).set(i64::from(stats.queued));
        dead.get_or_create(&labels).set(i64::from(stats.dead));
        let oldest = stats
            .oldest_ms
            .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        age.get_or_create(&labels).set(oldest);
    }
    registry.register(
        "hermes_outbox_depth",
        "Queued sends not yet delivered, by platform",
        depth,
    );
    registry.register(
        "hermes_outbox_oldest_age_seconds",
        "Age of the oldest queued send, by platform (0: none queued)",
        age,
    );
    registry.register(
        "hermes_dead_letters",
        "Dead letters kept, by platform",
        dead,
    );
    let headroom = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (platform, tokens) in &outbox.headroom {
        headroom
            .get_or_create(&vec![("platform", platform.clone())])
            .set(*tokens);
    }
    registry.register(
        "hermes_rate_budget_tokens",
        "Tokens left in each platform's rate budget (platforms with a budget only)",
        headroom,
    );
}
