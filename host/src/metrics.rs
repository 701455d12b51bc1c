//! `GET /metrics`: the gateway's counters in the OpenMetrics text format, encoded by the
//! `prometheus-client` crate (no hand-written exposition).
//!
//! Counters the gateway counts as things happen (sends, their latency, inbound, routed sends)
//! live here. Everything else (loads per platform, reloads, the journal, in-flight calls,
//! resident libraries) is read at scrape time into a [`Snapshot`] and encoded beside them, so
//! no value is kept twice. Each family has one name: counters end in `_total`, gauges do not.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{journal::JournalStatus, registry::PlatformStatus};

/// Send latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The gateway's counters. Handles are shared: cloning one counts into the same value.
#[derive(Clone)]
pub struct Metrics {
    sends: Family<Labels, Counter>,
    latency: Histogram,
    inbound: Family<Labels, Counter>,
    routed: Family<Labels, Counter>,
    stale_deliveries: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sends: Family::default(),
            latency: Histogram::new(BUCKETS),
            inbound: Family::default(),
            routed: Family::default(),
            stale_deliveries: Family::default(),
        }
    }
}

/// Values read at scrape time.
pub struct Snapshot<'a> {
    /// Every platform's status.
    pub platforms: &'a [PlatformStatus],
    /// Reloads done and refused.
    pub reloads: (u64, u64),
    /// Requests and plugin calls in progress.
    pub in_flight: usize,
    /// Shadow copies still mapped though not serving; `None` when unknown.
    pub resident_stale_libraries: Option<usize>,
    /// The journal.
    pub journal: &'a JournalStatus,
}

impl Metrics {
    /// A send through `platform` finished with `result` (`ok`, `error`, `timeout`...).
    pub fn send(&self, platform: &str, result: &'static str, took: std::time::Duration) {
        self.sends
            .get_or_create(&vec![
                ("platform", platform.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// An inbound message arrived on `platform`.
    pub fn inbound(&self, platform: &str) {
        self.inbound
            .get_or_create(&vec![("platform", platform.to_owned())])
            .inc();
    }

    /// A routed send finished (`ok` or `error`).
    pub fn routed(&self, result: &'static str) {
        self.routed
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// A replaced or stopped generation of `platform` tried to deliver; refused.
    pub fn stale_delivery(&self, platform: &str) {
        self.stale_deliveries
            .get_or_create(&vec![("platform", platform.to_owned())])
            .inc();
    }

    /// The OpenMetrics text: the counters, then `snapshot`.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        let mut registry = Registry::default();
        registry.register(
            "hermes_sends",
            "Sends by platform and result",
            self.sends.clone(),
        );
        registry.register("hermes_send_seconds", "Send latency", self.latency.clone());
        registry.register(
            "hermes_inbound",
            "Inbound messages by platform",
            self.inbound.clone(),
        );
        registry.register(
            "hermes_routed",
            "Routed sends by result",
            self.routed.clone(),
        );
        registry.register(
            "hermes_stale_deliveries",
            "Deliveries refused because their generation no longer serves",
            self.stale_deliveries.clone(),
        );

        let loads = Family::<Labels, Counter>::default();
        let load_seconds = Family::<Labels, Counter<f64>>::default();
        for p in snapshot.platforms {
            let labels = vec![("platform", p.id.clone())];
            loads.get_or_create(&labels).inc_by(p.loads);
            load_seconds.get_or_create(&labels).inc_by(p.load_seconds);
        }
        registry.register("hermes_loads", "Library loads by platform", loads);
        registry.register(
            "hermes_load_seconds",
            "Time spent loading and starting, by platform",
            load_seconds,
        );
        let reloads = Family::<Labels, Counter>::default();
        reloads
            .get_or_create(&vec![("outcome", "done".into())])
            .inc_by(snapshot.reloads.0);
        reloads
            .get_or_create(&vec![("outcome", "refused".into())])
            .inc_by(snapshot.reloads.1);
        registry.register("hermes_reloads", "Reloads by outcome", reloads);

        let journal = snapshot.journal;
        for (name, help, value) in [
            (
                "hermes_journal_written",
                "Journal records written",
                journal.written,
            ),
            (
                "hermes_journal_errors",
                "Failed journal write attempts",
                journal.errors,
            ),
            (
                "hermes_journal_dropped",
                "Journal records dropped (the queue was full)",
                journal.dropped,
            ),
        ] {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        }

        let running = snapshot
            .platforms
            .iter()
            .filter(|s| s.state == crate::registry::EntryState::Running)
            .count();
        let stale = snapshot.resident_stale_libraries.map_or(-1, |n| n as i64);
        for (name, help, value) in [
            (
                "hermes_platforms_installed",
                "Installed plugins",
                snapshot.platforms.len() as i64,
            ),
            (
                "hermes_platforms_running",
                "Platforms loaded and running",
                running as i64,
            ),
            (
                "hermes_calls_in_flight",
                "Requests and plugin calls in progress",
                snapshot.in_flight as i64,
            ),
            (
                "hermes_resident_stale_libraries",
                "Shadow copies still mapped though not serving (-1: unknown)",
                stale,
            ),
            (
                "hermes_journal_degraded",
                "1 while the journal cannot write or its queue is full",
                i64::from(journal.state != "ok"),
            ),
            (
                "hermes_journal_queued_bytes",
                "Journal bytes waiting for the writer",
                journal.queued_bytes as i64,
            ),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }

        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
