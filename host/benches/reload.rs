//! Hot-reload benchmarks: from a library file being replaced to the first send served by the
//! new generation, and how long calls are held during the swap, while sends keep flowing.
//!
//! Run with `make bench`. A release `serve --dev` watches a copy of the release loopback; the
//! bench replaces it the way cargo does (new file, unlink, link), alternating between the two
//! release builds (0.1.0 and 0.2.0-next), 50 times at the default debounce (150 ms). Each
//! replacement appends a different 8-byte tail to the file, so every reload is new content, as
//! a rebuild is: the probe's verdict cache never answers, and each reload pays for a probe.
//! The release runs go twice, side by side: with the probe (the default) and without it.

mod common;

use common::{percentile_f64, spawn, target};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A keep-alive client: one send, returning (status, generation).
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: String,
}

impl Client {
    fn new(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            addr: addr.to_owned(),
        }
    }

    fn send(&mut self) -> (u16, u64) {
        let body = r#"{"chat_id":"bench","text":"x"}"#;
        write!(
            self.writer,
            "POST /api/platforms/lb/send HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        (status, json["generation"].as_u64().unwrap_or(0))
    }
}

fn replace_like_cargo(src: &Path, dest: &Path, salt: u64) {
    let tmp = dest.with_extension("so.tmp-new");
    let mut bytes = std::fs::read(src).unwrap();
    bytes.extend_from_slice(&salt.to_le_bytes());
    std::fs::write(&tmp, bytes).unwrap();
    let _ = std::fs::remove_file(dest);
    std::fs::hard_link(&tmp, dest).unwrap();
    std::fs::remove_file(&tmp).unwrap();
}

fn main() {
    println!("## hot reload (`cargo bench -p hermes-host --bench reload`)\n");
    println!(
        "50 reloads of a loopback between two builds (cargo's way: a finished file linked in, which reloads at once; the 150 ms debounce is only for files still being written), two clients sending throughout.\n"
    );
    for (profile, probe) in [("release", true), ("release", false), ("debug", true)] {
        bench(
            profile,
            probe,
            [
                target().join(format!("{profile}/libhermes_loopback.so")),
                target().join(format!("variant/{profile}/libhermes_loopback.so")),
            ],
        );
    }
}

fn bench(profile: &str, with_probe: bool, builds: [std::path::PathBuf; 2]) {
    for b in &builds {
        assert!(b.is_file(), "{} is missing: run `make bench`", b.display());
    }
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let plugin = dir.path().join("plugins/lb");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::write(plugin.join("plugin.toml"), "[plugin]\nid = \"lb\"\nname = \"LB\"\nversion = \"0.1.0\"\napi = 1\nlibrary = \"hermes_loopback\"\n").unwrap();
    let library = plugin.join("libhermes_loopback.so");
    std::fs::copy(&builds[0], &library).unwrap();
    let config = dir.path().join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = []\nstate_dir = \"state\"\nprobe = {with_probe}\n[platforms.lb]\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hermes-host"));
    command
        .arg("--config")
        .arg(&config)
        .args(["--log-level", "error", "serve", "--dev"]);
    let (server, _) = spawn(command);
    let addr = server.addr.clone();
    let socket = dir.path().join("state/control.sock");
    let timeout = Duration::from_secs(30);
    let control = hermes_host::control::Client::new(&socket, timeout);
    control
        .blocking(control.hotreload("lb", true))
        .unwrap()
        .expect("hot reload is on");

    // Background traffic: two clients sending all along, counting failures.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent, failed, addr) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&failed),
                addr.clone(),
            );
            std::thread::spawn(move || {
                let mut client = Client::new(&addr);
                while !stop.load(Ordering::Relaxed) {
                    let (status, _) = client.send();
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut probe = Client::new(&addr);
    let mut to_served = Vec::new();
    let mut held = Vec::new();
    let mut stop_ms = Vec::new();
    let mut start_ms = Vec::new();
    let mut generation = probe.send().1;
    for i in 0..50 {
        let started = Instant::now();
        replace_like_cargo(&builds[(i + 1) % 2], &library, i as u64 + 1);
        loop {
            let (status, g) = probe.send();
            if status != 200 {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            if g > generation {
                generation = g;
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "reload {i} never served"
            );
        }
        to_served.push(started.elapsed().as_secs_f64() * 1e3);
        // The new generation serves before the reload finishes its bookkeeping (the old library
        // is unloaded after the swap): wait for the record of this reload.
        loop {
            let status = control.blocking(control.hotreload_status()).unwrap();
            let reloads = &status.plugins[0].reloads;
            if reloads.done == i as u64 + 1 {
                let last = reloads.last.as_ref().expect("a reload was recorded");
                held.push(last.held_ms);
                stop_ms.push(last.stop_ms);
                start_ms.push(last.start_ms);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let status = control.blocking(control.hotreload_status()).unwrap();
    let size = std::fs::metadata(&builds[0]).map_or(0, |m| m.len()) as f64 / 1048576.0;
    let probed = if with_probe {
        "with the probe"
    } else {
        "probe off"
    };
    println!("### {profile} loopback ({size:.1} MiB), {probed}\n");
    println!("| measure | p50 | p95 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, v: &mut Vec<f64>| {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile_f64(v, 0.5),
            percentile_f64(v, 0.95),
            percentile_f64(v, 0.99),
            percentile_f64(v, 1.0)
        );
    };
    row(
        "library replaced -> first send served by the new generation",
        &mut to_served,
    );
    row("calls held at the door during the swap", &mut held);
    row("of which: the old instance's stop", &mut stop_ms);
    row("of which: the new instance's start", &mut start_ms);
    println!(
        "\nSends during the run: {} answered, {} failed; reloads done {}, refused {}; resident stale libraries {}.\n",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        status.plugins[0].reloads.done,
        status.plugins[0].reloads.refused,
        status
            .resident_stale_libraries
            .map_or("unknown".to_owned(), |n| n.to_string())
    );
}
