//! Delivery benchmarks (`cargo bench -p hermes-host --bench delivery`):
//! - queued sends (`Prefer: respond-async`) against direct sends, with `fsync` and with `flush`
//!   durability, side by side in one run: accepted per second, and delivered per second (until
//!   the last accepted record is sent);
//! - a queued send's added latency at an empty queue (until its `delivery` event) against a
//!   direct send's answer;
//! - the store alone: a write per message, an idempotency-key lookup, size per million;
//! - rate accuracy: queued sends through a 50/s budget, the delivered rate over 60 s.
//!
//! Gateways run as child processes (release build) serving the release loopback.

mod common;

use common::{Server, load_with, median, percentile, spawn, target};
use hermes_host::store::{Claim, NewDelivery, Store};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const SEND: &str = "/api/platforms/loopback/send";

fn config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n[plugins]\ndirs = [{:?}]\nlibrary_dirs = [{:?}]\nstate_dir = \"state\"\n{extra}\n[platforms.loopback]\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../plugins")
                .display()
                .to_string(),
            target().join("release").display().to_string()
        ),
    )
    .unwrap();
    config
}

fn gateway(dir: &Path, extra: &str) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hermes-host"));
    command
        .arg("--config")
        .arg(config(dir, extra))
        .args(["--log-level", "error", "serve"]);
    spawn(command).0
}

fn bench_dir() -> tempfile::TempDir {
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(&base).unwrap()
}

/// A counter's value from `/metrics` (0 when absent).
fn metric(addr: &str, sample: &str) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const SENT: &str = "hermes_deliveries_sent_total{platform=\"loopback\"}";

fn body(client: usize) -> String {
    format!(r#"{{"chat_id":"c{client}","text":"hello"}}"#)
}

/// Direct against queued sends from `clients` clients (each to its own chat) for `secs`:
/// (direct req/s, queued accepted/s, queued delivered/s).
fn round(addr: &str, clients: usize, secs: Duration) -> (f64, f64, f64) {
    let (direct, _) = load_with(addr, SEND, &body, "", 200, clients, secs);
    let before = metric(addr, SENT);
    let started = Instant::now();
    let (accepted, _) = load_with(
        addr,
        SEND,
        &body,
        "Prefer: respond-async\r\n",
        202,
        clients,
        secs,
    );
    let want = before + (accepted * secs.as_secs_f64()).round();
    while metric(addr, SENT) < want {
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered = (want - before) / started.elapsed().as_secs_f64();
    (direct, accepted, delivered)
}

fn bench_throughput() {
    let secs = Duration::from_secs(2);
    let clients = 16;
    println!(
        "### Queued against direct sends (release loopback, {clients} keep-alive clients each to its own chat, median of 3 interleaved {} s rounds)\n",
        secs.as_secs()
    );
    println!(
        "| durability | direct req/s | queued accepted/s | queued delivered/s | delivered / direct |"
    );
    println!("|---|---:|---:|---:|---:|");
    let dirs = [bench_dir(), bench_dir()];
    let gateways = [
        gateway(dirs[0].path(), "[journal]\ndurability = \"fsync\"\n"),
        gateway(dirs[1].path(), "[journal]\ndurability = \"flush\"\n"),
    ];
    for gw in &gateways {
        round(&gw.addr, 4, Duration::from_millis(300));
    }
    let mut runs: [Vec<(f64, f64, f64)>; 2] = Default::default();
    for _ in 0..3 {
        for (i, gw) in gateways.iter().enumerate() {
            runs[i].push(round(&gw.addr, clients, secs));
        }
    }
    for (name, runs) in ["fsync", "flush"].iter().zip(runs) {
        let pick = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[1]
        };
        let (d, a, q) = (pick(|r| r.0), pick(|r| r.1), pick(|r| r.2));
        println!("| {name} | {d:.0} | {a:.0} | {q:.0} | {:.2} |", q / d);
    }
    println!();
}

/// An open SSE stream.
struct Sse(BufReader<TcpStream>);

impl Sse {
    fn connect(addr: &str) -> Sse {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                return Sse(reader);
            }
        }
    }

    /// The next `delivery` event's id, and when it was read.
    fn next_delivery(&mut self) -> (String, Instant) {
        let (id, _, at) = self.next_delivery_event();
        (id, at)
    }

    /// The next `delivery` event's id, its `updated_ms`, and when it was read.
    fn next_delivery_event(&mut self) -> (String, i64, Instant) {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.0.read_line(&mut line).unwrap() > 0);
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                let event: serde_json::Value = serde_json::from_str(data).unwrap();
                if event["kind"] == "delivery" {
                    return (
                        event["delivery_id"].as_str().unwrap().to_owned(),
                        event["updated_ms"].as_i64().unwrap(),
                        Instant::now(),
                    );
                }
            }
        }
    }
}

/// One keep-alive connection's POST: (status, body).
fn post(stream: &mut BufReader<TcpStream>, addr: &str, body: &str, headers: &str) -> String {
    write!(
        stream.get_mut(),
        "POST {SEND} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut line = String::new();
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut answer = vec![0; length];
    stream.read_exact(&mut answer).unwrap();
    String::from_utf8(answer).unwrap()
}

fn bench_latency() {
    let dir = bench_dir();
    let gw = gateway(dir.path(), "");
    let mut sse = Sse::connect(&gw.addr);
    let stream = TcpStream::connect(&gw.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut conn = BufReader::new(stream);
    let body = r#"{"chat_id":"lat","text":"hello"}"#;
    let (mut direct, mut queued) = (Vec::new(), Vec::new());
    for i in 0..1200 {
        let started = Instant::now();
        post(&mut conn, &gw.addr, body, "");
        let d = started.elapsed();
        let started = Instant::now();
        let answer = post(&mut conn, &gw.addr, body, "Prefer: respond-async\r\n");
        let id: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let (got, at) = sse.next_delivery();
        assert_eq!(id["delivery_id"].as_str(), Some(got.as_str()));
        if i >= 200 {
            direct.push(d);
            queued.push(at - started);
        }
    }
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    let (d50, q50) = (percentile(&mut direct, 0.5), percentile(&mut queued, 0.5));
    println!(
        "### A queued send at an empty queue, until its `delivery` event, against a direct send's answer (release, `flush`, one client alternating, 1000 each after 200 warm-up)\n"
    );
    println!("| | p50 | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| direct send, answered | {} | {} |",
        us(d50),
        us(percentile(&mut direct, 0.99))
    );
    println!(
        "| queued send, delivered | {} | {} |",
        us(q50),
        us(percentile(&mut queued, 0.99))
    );
    println!(
        "\nAdded by queueing, p50: {}\n",
        us(q50.saturating_sub(d50))
    );
}

/// A store operation measured: its name, how many times, the call.
type Row<'a> = (&'static str, usize, &'a dyn Fn(usize));

fn bench_store() {
    let dir = bench_dir();
    let store = Store::open(dir.path()).unwrap();
    let ttl = Duration::from_secs(86_400);
    let item = |n: usize, key: Option<String>| NewDelivery {
        platform: "lb".into(),
        chat: format!("c{}", n % 16),
        kind: "message".into(),
        body: format!(
            r#"{{"chat_id":"c{}","text":"hello, this is message {n}"}}"#,
            n % 16
        )
        .into_bytes(),
        key: key.map(|k| (k, format!("{n:032x}"))),
    };
    let timed = |n: usize, f: &dyn Fn(usize)| {
        let mut samples: Vec<Duration> = (0..n)
            .map(|i| {
                let t = Instant::now();
                f(i);
                t.elapsed()
            })
            .collect();
        (
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99),
        )
    };
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    println!(
        "### The store alone (SQLite WAL on target/bench-tmp's disk; one record per call, no grouping)\n"
    );
    println!("| operation | p50 | p99 |");
    println!("|---|---:|---:|");
    let rows: [Row<'_>; 6] = [
        ("queue a send (`flush`)", 5000, &|i| {
            store
                .enqueue(&[item(i, None)], "bench", ttl, false)
                .unwrap();
        }),
        ("queue a send (`fsync`)", 500, &|i| {
            store.enqueue(&[item(i, None)], "bench", ttl, true).unwrap();
        }),
        (
            "queue a send with an idempotency key (`flush`)",
            5000,
            &|i| {
                store
                    .enqueue(&[item(i, Some(format!("k{i}")))], "bench", ttl, false)
                    .unwrap();
            },
        ),
        ("idempotency key lookup (a repeat, answered)", 5000, &|i| {
            let claim = store
                .claim("lb", &format!("k{i}"), &format!("{i:032x}"), "bench", ttl)
                .unwrap();
            assert!(matches!(claim, Claim::Answered { .. }));
        }),
        ("take the next 64 records of a chat", 5000, &|i| {
            store.pending("lb", &format!("c{}", i % 16), 64).unwrap();
        }),
        ("inbound id first seen", 5000, &|i| {
            store.first_sight("lb", "c", &format!("$event{i}")).unwrap();
        }),
    ];
    for (name, n, f) in rows {
        let (p50, p99) = timed(n, f);
        println!("| {name} | {} | {} |", us(p50), us(p99));
    }
    drop(store);

    // Size: 100,000 sends queued in batches, then sent (their bodies dropped).
    let dir = bench_dir();
    let store = Store::open(dir.path()).unwrap();
    let n = 100_000;
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(512) {
        let batch: Vec<NewDelivery> = chunk.iter().map(|i| item(*i, None)).collect();
        for e in store.enqueue(&batch, "bench", ttl, false).unwrap() {
            if let hermes_host::store::Enqueued::Queued(id) = e {
                ids.push(id);
            }
        }
    }
    let size = |dir: &Path| {
        ["hermes.db", "hermes.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let queued = size(dir.path());
    for id in &ids {
        store.mark_sent(id, "lb-1-1").unwrap();
    }
    drop(store);
    // Reopened: the WAL is checkpointed into the database on close.
    drop(Store::open(dir.path()).unwrap());
    let sent = size(dir.path());
    let per_million = |bytes: u64| bytes as f64 * (1e6 / n as f64) / f64::from(1 << 20);
    println!(
        "\nStore size per million messages (~60-byte bodies): {:.0} MiB while queued, {:.0} MiB once sent (metadata kept for `GET /api/deliveries/{{id}}`; pruned after `idempotency_ttl_secs`).\n",
        per_million(queued),
        per_million(sent)
    );
}

fn bench_rate() {
    let dir = bench_dir();
    let rate = 50.0;
    let gw = gateway(dir.path(), "");
    drop(gw);
    let config = config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}[platforms.loopback.delivery]\nrate_per_sec = {rate}\nburst = 1\n"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hermes-host"));
    command
        .arg("--config")
        .arg(&config)
        .args(["--log-level", "error", "serve"]);
    let gw = spawn(command).0;
    let mut sse = Sse::connect(&gw.addr);
    let n = 3001;
    // Read while the sends are queued (the stream would fall behind otherwise); the time of
    // each delivery is the gateway's own (`updated_ms`).
    let reader = std::thread::spawn(move || {
        (0..n)
            .map(|_| sse.next_delivery_event().1)
            .collect::<Vec<i64>>()
    });
    let stream = TcpStream::connect(&gw.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut conn = BufReader::new(stream);
    for _ in 0..n {
        post(
            &mut conn,
            &gw.addr,
            r#"{"chat_id":"rate","text":"paced"}"#,
            "Prefer: respond-async\r\n",
        );
    }
    let times = reader.join().unwrap();
    let span = Duration::from_millis((times[n - 1] - times[0]) as u64);
    let measured = (n - 1) as f64 / span.as_secs_f64();
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| Duration::from_millis((w[1] - w[0]) as u64))
        .collect();
    println!(
        "### Rate accuracy: {} queued sends through a budget of `rate_per_sec = {rate}`, `burst = 1` (release loopback)\n",
        n - 1
    );
    println!(
        "Delivered {:.2}/s over {:.1} s ({:+.2} % of the budget); median gap {:.2} ms.\n",
        measured,
        span.as_secs_f64(),
        (measured / rate - 1.0) * 100.0,
        median(gaps).as_secs_f64() * 1e3
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("HERMES_BENCH_RATE").is_some() {
        return bench_rate();
    }
    bench_store();
    bench_latency();
    bench_throughput();
    if std::env::var_os("HERMES_BENCH_QUICK").is_none() {
        bench_rate();
    }
}
