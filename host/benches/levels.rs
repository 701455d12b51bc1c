//! Plugin API levels on the hot path: a no-op call and a send through an instance of the
//! loopback built for level 1.0 (from its frozen sources) and for level 1.1 (this tree), in
//! alternating rounds in one process; and the cost of splitting a long text.
//!
//! Run with `make bench` (release plugins, and `scripts/compat-levels --release`).

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::{median, percentile, target, us};
use hermes_host::{
    loader::{DiscardInbound, Instance, Library, StartOptions},
    message::Outbound,
};

fn start(lib: &std::path::Path, shadow: &std::path::Path) -> Instance {
    Library::open(lib, shadow)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .start(StartOptions {
            workers: 1,
            ..StartOptions::new("loopback", 1, "{}", Arc::new(DiscardInbound))
        })
        .unwrap()
}

/// p50 of `n` timed runs of `f`, after a warm-up.
fn p50(n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    percentile(&mut samples, 0.5)
}

fn main() {
    let shadow = tempfile::tempdir_in(target()).unwrap();
    let libs = [
        (
            "1.0 (frozen sources, plugin-api 0.1)",
            target().join("compat/level-1.0/release/libhermes_loopback.so"),
        ),
        (
            "1.1 (this tree, plugin-api 0.2)",
            target().join("release/libhermes_loopback.so"),
        ),
    ];
    let instances: Vec<Instance> = libs
        .iter()
        .map(|(_, lib)| start(lib, shadow.path()))
        .collect();
    let message = Outbound::new("c", "x");
    let rounds = 7;
    let mut calls = vec![Vec::new(); libs.len()];
    let mut sends = vec![Vec::new(); libs.len()];
    for _ in 0..rounds {
        for (i, instance) in instances.iter().enumerate() {
            calls[i].push(p50(20_000, || {
                black_box(instance.health().unwrap());
            }));
            sends[i].push(p50(20_000, || {
                black_box(instance.send(&message).unwrap());
            }));
        }
    }
    println!(
        "### Plugin API levels: the same loopback built for each level, one process ({rounds} alternating rounds of 20,000 calls each; medians of the rounds' p50)\n"
    );
    println!("| plugin built for | no-op call p50 | send p50 | rounds' p50 range (send) |");
    println!("|---|---:|---:|---|");
    for (i, (name, _)) in libs.iter().enumerate() {
        let mut range = sends[i].clone();
        range.sort();
        println!(
            "| {name} | {} | {} | {}-{} |",
            us(median(calls[i].clone())),
            us(median(sends[i].clone())),
            us(range[0]),
            us(range[range.len() - 1])
        );
    }
    let ratio = median(sends[1].clone()).as_secs_f64() / median(sends[0].clone()).as_secs_f64();
    println!("\nSend p50, level 1.1 over level 1.0: {ratio:.2}.\n");
    for instance in instances {
        let _ = instance
            .stop(false, Duration::from_secs(5))
            .map(|s| s.library.unload());
    }

    // Splitting: 100 KB of words into IRC-sized parts.
    let text = "lorem ipsum dolor sit amet ".repeat(100 * 1024 / 27);
    let mut parts = 0;
    let split = p50(200, || {
        parts = black_box(hermes_host::capabilities::split_text(&text, 400)).len();
    });
    println!(
        "### Splitting a {} KB text under `max_text_len = 400`\n\n{parts} parts in {} (p50 of 200)\n",
        text.len() / 1024,
        us(split)
    );
}
