//! Counters for `GET /metrics`, rendered as Prometheus text.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex, time::Duration};

use crate::registry::PlatformStatus;

/// Send latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The gateway's counters.
#[derive(Default)]
pub struct Metrics {
    /// By platform, then by result label.
    sends: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    latency: Mutex<Histogram>,
    inbound: Mutex<BTreeMap<String, u64>>,
    routed: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// A send through `platform` finished with `result` (`ok`, `error`, `timeout`...).
    pub fn send(&self, platform: &str, result: &'static str, took: Duration) {
        let mut sends = lock(&self.sends);
        // Look up before inserting: no allocation on the hot path.
        match sends.get_mut(platform) {
            Some(by_result) => *by_result.entry(result).or_default() += 1,
            None => {
                sends.insert(platform.to_owned(), BTreeMap::from([(result, 1)]));
            }
        }
        drop(sends);
        let secs = took.as_secs_f64();
        let mut h = lock(&self.latency);
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// An inbound message arrived on `platform`.
    pub fn inbound(&self, platform: &str) {
        let mut inbound = lock(&self.inbound);
        match inbound.get_mut(platform) {
            Some(n) => *n += 1,
            None => {
                inbound.insert(platform.to_owned(), 1);
            }
        }
    }

    /// A routed send finished (`ok` or `error`).
    pub fn routed(&self, result: &'static str) {
        *lock(&self.routed).entry(result).or_default() += 1;
    }

    /// The Prometheus text, with per-platform load counters from `platforms` and the reloads
    /// done and refused; `gauges` are extra `(name, help, value)` lines read at render time.
    pub fn render(
        &self,
        platforms: &[PlatformStatus],
        reloads: (u64, u64),
        gauges: &[(&str, &str, f64)],
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hermes_sends_total Sends by platform and result.\n# TYPE hermes_sends_total counter"
        );
        for (platform, by_result) in lock(&self.sends).iter() {
            for (result, n) in by_result {
                let _ = writeln!(
                    out,
                    "hermes_sends_total{{platform=\"{platform}\",result=\"{result}\"}} {n}"
                );
            }
        }
        let h = lock(&self.latency);
        let _ = writeln!(
            out,
            "# HELP hermes_send_seconds Send latency.\n# TYPE hermes_send_seconds histogram"
        );
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "hermes_send_seconds_bucket{{le=\"{bound}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(out, "hermes_send_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(
            out,
            "hermes_send_seconds_sum {}\nhermes_send_seconds_count {}",
            h.sum, h.count
        );
        drop(h);
        let _ = writeln!(
            out,
            "# HELP hermes_inbound_total Inbound messages by platform.\n# TYPE hermes_inbound_total counter"
        );
        for (platform, n) in lock(&self.inbound).iter() {
            let _ = writeln!(out, "hermes_inbound_total{{platform=\"{platform}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP hermes_loads_total Library loads by platform.\n# TYPE hermes_loads_total counter"
        );
        for p in platforms {
            let _ = writeln!(
                out,
                "hermes_loads_total{{platform=\"{}\"}} {}",
                p.id, p.loads
            );
        }
        let _ = writeln!(
            out,
            "# HELP hermes_load_seconds_total Time spent loading and starting, by platform.\n# TYPE hermes_load_seconds_total counter"
        );
        for p in platforms {
            let _ = writeln!(
                out,
                "hermes_load_seconds_total{{platform=\"{}\"}} {}",
                p.id, p.load_seconds
            );
        }
        let _ = writeln!(
            out,
            "# HELP hermes_routed_total Routed sends by result.\n# TYPE hermes_routed_total counter"
        );
        for (result, n) in lock(&self.routed).iter() {
            let _ = writeln!(out, "hermes_routed_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP hermes_reloads_total Reloads by outcome.\n# TYPE hermes_reloads_total counter"
        );
        let _ = writeln!(
            out,
            "hermes_reloads_total{{outcome=\"done\"}} {}",
            reloads.0
        );
        let _ = writeln!(
            out,
            "hermes_reloads_total{{outcome=\"refused\"}} {}",
            reloads.1
        );
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
