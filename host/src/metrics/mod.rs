//! `GET /metrics`: the gateway's counters in the OpenMetrics text format, encoded by the
//! `prometheus-client` crate (no hand-written exposition).
//!
//! Counters the gateway counts as things happen (sends, their latency, inbound, routed sends,
//! stale deliveries) live here, in plain maps that cost the hot path one lock and no allocation. Everything else (loads per platform, reloads, the journal, in-flight calls,
//! resident libraries) is read at scrape time into a [`Snapshot`] and encoded beside them, so
//! no value is kept twice. Each family has one name: counters end in `_total`, gauges do not.
//!
//! The format follows the scraper's `Accept`: OpenMetrics when it asks for
//! `application/openmetrics-text` (Prometheus does, first) or for nothing in particular, and
//! Prometheus' text format 0.0.4 when it asks for `text/plain` only (older scrapers, `promtool
//! check metrics`, curl with that header): [`to_prometheus_text`] rewrites the one into the other.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{journal::JournalStatus, registry::PlatformStatus};

mod delivery;

pub(crate) use delivery::OutboxSnapshot;

/// Send latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`to_prometheus_text`]'s text.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for the Prometheus text format rather than
/// OpenMetrics: it names `text/plain` and not `application/openmetrics-text`.
pub(crate) fn wants_prometheus_text(accept: &str) -> bool {
    let accept = accept.to_ascii_lowercase();
    accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
}

/// Rewrites OpenMetrics text (as [`Metrics::render`] makes it) into Prometheus' text format
/// 0.0.4: no `# EOF` or `# UNIT` lines, counter families named as their `_total` samples,
/// `unknown` as `untyped`.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# TYPE ", "# HELP "]
            .iter()
            .find_map(|prefix| Some((*prefix, line.strip_prefix(prefix)?)));
        match described {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            // Samples are the same in both; `_created` samples are OpenMetrics only.
            None if counters
                .iter()
                .any(|c| line.starts_with(&format!("{c}_created"))) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

type Labels = Vec<(&'static str, String)>;

/// The gateway's counters. The hot path (a send, an inbound message) takes one uncontended lock
/// and allocates nothing once a platform has been seen; the `prometheus-client` families are
/// built from these values at scrape time.
#[derive(Default)]
pub struct Metrics {
    /// By platform, then by result label.
    sends: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    latency: Mutex<LatencyBuckets>,
    inbound: Mutex<BTreeMap<String, u64>>,
    routed: Mutex<BTreeMap<&'static str, u64>>,
    stale_deliveries: Mutex<BTreeMap<String, u64>>,
    /// By platform: inbound messages from senders the platform does not admit.
    inbound_refused: Mutex<BTreeMap<String, u64>>,
    /// By platform: isolated children that died unasked.
    crashes: Mutex<BTreeMap<String, u64>>,
    delivery: delivery::DeliveryCounters,
}

/// Send latencies: a count per bucket (not cumulative), the sum and the count.
#[derive(Debug, Default, Clone)]
struct LatencyBuckets {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl EncodeMetric for LatencyBuckets {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one more under `key`, allocating the key only the first time; the new count.
fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) -> u64 {
    let mut map = lock(map);
    match map.get_mut(key) {
        Some(n) => {
            *n += 1;
            *n
        }
        None => {
            map.insert(key.to_owned(), 1);
            1
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
    /// The outbox; `None` when the store could not be read.
    pub outbox: Option<&'a OutboxSnapshot>,
}

impl Metrics {
    /// A send through `platform` finished with `result` (`ok`, `error`, `timeout`...).
    pub fn send(&self, platform: &str, result: &'static str, took: std::time::Duration) {
        {
            let mut sends = lock(&self.sends);
            match sends.get_mut(platform) {
                Some(by_result) => *by_result.entry(result).or_default() += 1,
                None => {
                    sends.insert(platform.to_owned(), BTreeMap::from([(result, 1)]));
                }
            }
        }
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        let mut latency = lock(&self.latency);
        latency.counts[bucket] += 1;
        latency.count += 1;
        latency.sum += secs;
    }

    /// An inbound message arrived on `platform`.
    pub fn inbound(&self, platform: &str) {
        bump(&self.inbound, platform);
    }

    /// A message from a sender `platform` does not admit was dropped; how many so far.
    pub fn inbound_refused(&self, platform: &str) -> u64 {
        bump(&self.inbound_refused, platform)
    }

    /// A routed send finished (`ok` or `error`).
    pub fn routed(&self, result: &'static str) {
        *lock(&self.routed).entry(result).or_default() += 1;
    }

    /// A replaced or stopped generation of `platform` tried to deliver; refused.
    pub fn stale_delivery(&self, platform: &str) {
        bump(&self.stale_deliveries, platform);
    }

    /// The child process of isolated `platform` died unasked.
    pub fn crash(&self, platform: &str) {
        bump(&self.crashes, platform);
    }

    /// The OpenMetrics text: the counters, then `snapshot`.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        let mut registry = Registry::default();
        let sends = Family::<Labels, Counter>::default();
        for (platform, by_result) in lock(&self.sends).iter() {
            for (result, n) in by_result {
                sends
                    .get_or_create(&vec![
                        ("platform", platform.clone()),
                        ("result", (*result).to_owned()),
                    ])
                    .inc_by(*n);
            }
        }
        registry.register("hermes_sends", "Sends by platform and result", sends);
        registry.register(
            "hermes_send_seconds",
            "Send latency",
            lock(&self.latency).clone(),
        );
        for (name, help, label, values) in [
            (
                "hermes_inbound",
                "Inbound messages by platform",
                "platform",
                lock(&self.inbound).clone(),
            ),
            (
                "hermes_inbound_refused",
                "Inbound messages dropped because the platform does not admit their sender (allowed_users)",
                "platform",
                lock(&self.inbound_refused).clone(),
            ),
            (
                "hermes_stale_deliveries",
                "Deliveries refused because their generation no longer serves",
                "platform",
                lock(&self.stale_deliveries).clone(),
            ),
            (
                "hermes_plugin_crashes",
                "Deaths of isolated plugins' child processes (signal, exit, out of memory, killed for a hung call)",
                "platform",
                lock(&self.crashes).clone(),
            ),
            (
                "hermes_routed",
                "Routed sends by result",
                "result",
                lock(&self.routed)
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
            ),
        ] {
            let family = Family::<Labels, Counter>::default();
            for (value, n) in values {
                family.get_or_create(&vec![(label, value)]).inc_by(n);
            }
            registry.register(name, help, family);
        }

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
        let quarantined = snapshot.platforms.iter().filter(|s| s.quarantined).count();
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
                "hermes_platforms_quarantined",
                "Platforms whose library is quarantined (it took the process down while loading)",
                quarantined as i64,
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

        delivery::register(&mut registry, &self.delivery, snapshot.outbox);

        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP hermes_sends Sends.\n# TYPE hermes_sends counter\nhermes_sends_total{platform=\"a\"} 2\n# HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP hermes_sends_total Sends.\n# TYPE hermes_sends_total counter\nhermes_sends_total{platform=\"a\"} 2\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
        assert!(wants_prometheus_text("text/plain;version=0.0.4;q=0.9"));
        assert!(!wants_prometheus_text(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        ));
        assert!(!wants_prometheus_text("*/*"));
    }
}
