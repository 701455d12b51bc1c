//! In process vs process isolation, side by side in one run, release builds throughout (the
//! release loopback and crashy fixture, the release `hermes-host` as the child program).
//!
//! - A no-op call (`health`) and a send, each way, p50 and p99: interleaved rounds of 2,000.
//! - Sends' throughput through the gateway (release `serve`, `POST /api/platforms/<id>/send`,
//!   keep-alive clients; the loopback in process and a second loopback isolated, side by side
//!   in the same server, 3 interleaved rounds), and through the registry alone (async senders
//!   calling the instance, no HTTP): the ratio each way.
//! - A baseline for the round trip: one byte through `cat` and back over pipes, the bare cost
//!   of waking another process and being woken by it on this machine.
//! - Load (open and start) each way: an isolated load spawns its child.
//! - Restart after a crash, through a release `serve`: from the send that crashes the child to
//!   the next send served. Each sample crashes another platform (20 copies of the fixture), so
//!   every restart is a first one (no backoff), as a lone crash in production is.
//!
//! Run with `make bench` (or `cargo build --workspace --release` first, then
//! `cargo bench -p hermes-host --bench isolation`).

mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    crash_to_served, load, ms, percentile, registry_with, release_with, scratch, serve_release, us,
};
use hermes_host::{message::Outbound, registry::Registry};

fn main() {
    let release = release_with(&[
        "libhermes_loopback.so",
        "libfixture_crashy.so",
        "hermes-host",
    ]);
    println!("## isolation (`cargo bench -p hermes-host --bench isolation`)\n");
    let dir = scratch();
    let registry = registry(dir.path(), &release);
    calls(&registry);
    throughput(&registry);
    loads(&registry);
    registry.shutdown();
    gateway_throughput(dir.path(), &release);
    restart(dir.path(), &release);
}

fn registry(dir: &Path, release: &Path) -> Registry {
    for id in ["inproc", "proc"] {
        let plugin = dir.join("plugins").join(id);
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::write(
            plugin.join("plugin.toml"),
            format!("[plugin]\nid = \"{id}\"\nname = \"{id}\"\nversion = \"0.1.0\"\napi = 1\nlibrary = \"hermes_loopback\"\n"),
        )
        .unwrap();
    }
    let text = format!(
        "[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = [\"{}\"]\nstate_dir = \"state\"\nshadow_dir = \"state/shadow\"\n\n[platforms.inproc]\nworkers = 2\n\n[platforms.proc]\nworkers = 2\nisolation = \"process\"\n",
        release.display()
    );
    registry_with(dir, release, &text)
}

fn row(what: &str, inproc: &mut [Duration], proc: &mut [Duration]) {
    let (a50, a99) = (percentile(inproc, 0.5), percentile(inproc, 0.99));
    let (b50, b99) = (percentile(proc, 0.5), percentile(proc, 0.99));
    println!(
        "| {what} | {} | {} | {} | {} | {:.1}x |",
        us(a50),
        us(a99),
        us(b50),
        us(b99),
        b50.as_secs_f64() / a50.as_secs_f64()
    );
}

fn calls(registry: &Registry) {
    println!("### Calls, one at a time (p50 / p99)\n");
    println!("| call | in process p50 | p99 | process p50 | p99 | process / in process (p50) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let inproc = registry.instance("inproc").unwrap();
    let proc = registry.instance("proc").unwrap();
    let message = Outbound::new("bench", "x");
    for _ in 0..2_000 {
        inproc.health().unwrap();
        proc.health().unwrap();
        inproc.send(&message).unwrap();
        proc.send(&message).unwrap();
    }
    let (mut h_in, mut h_pr, mut s_in, mut s_pr) = (vec![], vec![], vec![], vec![]);
    for _round in 0..10 {
        for (instance, samples) in [(&inproc, &mut h_in), (&proc, &mut h_pr)] {
            for _ in 0..2_000 {
                let started = Instant::now();
                std::hint::black_box(instance.health().unwrap());
                samples.push(started.elapsed());
            }
        }
        for (instance, samples) in [(&inproc, &mut s_in), (&proc, &mut s_pr)] {
            for _ in 0..2_000 {
                let started = Instant::now();
                std::hint::black_box(instance.send(&message).unwrap());
                samples.push(started.elapsed());
            }
        }
    }
    row("no-op (`health`)", &mut h_in, &mut h_pr);
    row(
        "send (the loopback echoes: a `deliver` round trip inside)",
        &mut s_in,
        &mut s_pr,
    );
    let mut pipe = pipe_round_trips(20_000);
    println!(
        "\nBaseline: one byte to `cat` and back over pipes, p50 {} / p99 {}.\n",
        us(percentile(&mut pipe, 0.5)),
        us(percentile(&mut pipe, 0.99))
    );
}

/// One byte to `cat` and back, `n` times: two processes waking each other, nothing else.
fn pipe_round_trips(n: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let mut cat = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut to, mut from) = (cat.stdin.take().unwrap(), cat.stdout.take().unwrap());
    let mut byte = [0u8; 1];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 1_000 {
        let started = Instant::now();
        to.write_all(b"x").unwrap();
        from.read_exact(&mut byte).unwrap();
        if i >= 1_000 {
            samples.push(started.elapsed());
        }
    }
    drop(to);
    let _ = cat.wait();
    samples
}

fn gateway_throughput(dir: &Path, release: &Path) {
    println!(
        "### Sends through the gateway (release `serve`, keep-alive clients, median of 3 interleaved 2 s rounds)\n"
    );
    println!("| clients | in process req/s | p50 | process req/s | p50 | process / in process |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/gw.sock\"\n[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = [\"{}\"]\nstate_dir = \"state\"\nshadow_dir = \"state/shadow\"\n[platforms.inproc]\nworkers = 8\n[platforms.proc]\nworkers = 8\nisolation = \"process\"\n",
            release.display()
        ),
    )
    .unwrap();
    let server = serve_release(release, dir, &config);
    let body = r#"{"chat_id":"bench","text":"hello"}"#;
    for id in ["inproc", "proc"] {
        load(
            &server.addr,
            &format!("/api/platforms/{id}/send"),
            body,
            4,
            Duration::from_millis(500),
        );
    }
    for clients in [1, 16, 64] {
        let (mut runs, mut lat) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        for _ in 0..3 {
            for (i, id) in ["inproc", "proc"].into_iter().enumerate() {
                let (rps, l) = load(
                    &server.addr,
                    &format!("/api/platforms/{id}/send"),
                    body,
                    clients,
                    Duration::from_secs(2),
                );
                runs[i].push(rps);
                lat[i].extend(l);
            }
        }
        for r in &mut runs {
            r.sort_by(f64::total_cmp);
        }
        println!(
            "| {clients} | {:.0} | {} | {:.0} | {} | {:.2} |",
            runs[0][1],
            us(percentile(&mut lat[0], 0.5)),
            runs[1][1],
            us(percentile(&mut lat[1], 0.5)),
            runs[1][1] / runs[0][1]
        );
    }
    println!();
}

fn throughput(registry: &Registry) {
    println!(
        "### Sends through the registry alone (async senders calling the instance, no HTTP, 2 s each)\n"
    );
    println!("| senders | in process | process | process / in process |");
    println!("|---:|---:|---:|---:|");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for senders in [16, 64] {
        let mut rates = Vec::new();
        for id in ["inproc", "proc"] {
            let instance = registry.instance(id).unwrap();
            let done = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            runtime.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..senders {
                    let (instance, done, stop) =
                        (Arc::clone(&instance), Arc::clone(&done), Arc::clone(&stop));
                    tasks.push(tokio::spawn(async move {
                        let message = Outbound::new("bench", "x");
                        while !stop.load(Ordering::Relaxed) {
                            instance.send_async(&message).await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                stop.store(true, Ordering::Relaxed);
                for t in tasks {
                    t.await.unwrap();
                }
            });
            rates.push(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
        }
        println!(
            "| {senders} | {:.0}/s | {:.0}/s | {:.2} |",
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
    println!();
}

fn loads(registry: &Registry) {
    println!("### Load and start (unload, then first use; 20 each, p50 / p99)\n");
    println!("| in process p50 | p99 | process p50 | p99 |");
    println!("|---:|---:|---:|---:|");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        for (id, samples) in [("inproc", &mut a), ("proc", &mut b)] {
            registry.unload(id).unwrap();
            let started = Instant::now();
            registry.instance(id).unwrap();
            samples.push(started.elapsed());
        }
    }
    println!(
        "| {} | {} | {} | {} |\n",
        ms(percentile(&mut a, 0.5)),
        ms(percentile(&mut a, 0.99)),
        ms(percentile(&mut b, 0.5)),
        ms(percentile(&mut b, 0.99))
    );
}

fn restart(dir: &Path, release: &Path) {
    println!("### Restart after a crash (release `serve`, 20 platforms crashed once each)\n");
    let n = 20;
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[plugins]\ndirs = [\"crashy\"]\nlibrary_dirs = [\"{}\"]\nstate_dir = \"state\"\nshadow_dir = \"state/shadow\"\n",
        release.display()
    );
    for i in 0..n {
        let plugin = dir.join(format!("crashy/c{i}"));
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::write(
            plugin.join("plugin.toml"),
            format!("[plugin]\nid = \"c{i}\"\nname = \"c\"\nversion = \"0.1.0\"\napi = 1\nlibrary = \"fixture_crashy\"\n"),
        )
        .unwrap();
        config.push_str(&format!("\n[platforms.c{i}]\nisolation = \"process\"\n"));
    }
    let path = dir.join("serve.toml");
    std::fs::write(&path, config).unwrap();
    let server = serve_release(release, dir, &path);
    let mut samples = Vec::new();
    for i in 0..n {
        samples.push(crash_to_served(&server.addr, &format!("c{i}")));
    }
    println!("| p50 | p99 | max |");
    println!("|---:|---:|---:|");
    println!(
        "| {} | {} | {} |\n",
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 0.99)),
        ms(percentile(&mut samples, 1.0))
    );
}
