//! IRC line splitting: the time to read one line of 1 KB, 64 KB and 1 MB from 4 KiB reads (as
//! the connection thread reads), with the line reader against a scan of the whole buffer at
//! every read (how lines were split before), side by side. Run: `cargo bench -p hermes-irc`.
//!
//! The line reader is linear: a 1 MB line costs about 1,000 times a 1 KB one (it is skipped as
//! over-long, without being kept). The whole-buffer scan grows with the square of the length.

use std::time::{Duration, Instant};

use hermes_irc::protocol::Lines;

/// Feeds `line` (plus CRLF) in 4 KiB reads through the line reader; lines out.
fn with_reader(line: &[u8]) -> usize {
    let mut lines = Lines::default();
    let mut out = 0;
    for chunk in line.chunks(4096).chain(std::iter::once(&b"\r\n"[..])) {
        lines.push(chunk);
        while lines.next_line().is_some() {
            out += 1;
        }
    }
    out
}

/// The same reads, split by scanning the whole buffer for a newline after every read.
fn with_rescan(line: &[u8]) -> usize {
    let mut buffer = Vec::new();
    let mut out = 0;
    for chunk in line.chunks(4096).chain(std::iter::once(&b"\r\n"[..])) {
        buffer.extend_from_slice(chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            buffer.drain(..=end);
            out += 1;
        }
    }
    out
}

/// The median of `runs` timings of `f(line)`.
fn median(runs: usize, line: &[u8], f: fn(&[u8]) -> usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f(std::hint::black_box(line)));
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    println!("### IRC: one line read in 4 KiB reads (median of 21 runs)\n");
    println!("| line | line reader | per KB | whole-buffer scan (before) | per KB |");
    println!("|---:|---:|---:|---:|---:|");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for kb in [1usize, 64, 1024] {
        let line = vec![b'x'; kb * 1000];
        let new = median(21, &line, with_reader);
        let old = median(if kb > 64 { 3 } else { 21 }, &line, with_rescan);
        println!(
            "| {kb} KB | {:.1} µs | {:.2} µs | {:.1} µs | {:.2} µs |",
            us(new),
            us(new) / kb as f64,
            us(old),
            us(old) / kb as f64
        );
    }
    println!();
}
