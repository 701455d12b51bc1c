//! `serve` benchmarks: start-up until `/health` answers (200 installed against 1, lazy against
//! eager), send throughput through the gateway against a bare axum handler, and the journal's
//! `fsync` durability against `flush`.
//!
//! Run with `make bench`. Both servers run as child processes on loopback, measured in the same
//! run by the same client; each start-up figure is a median over interleaved runs.

mod common;

use common::{Server, load, median, percentile, spawn, target};
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

fn ms1(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A folder with `installed` copies of the loopback manifest and a config.
fn setup(dir: &Path, installed: usize, configured: usize) -> PathBuf {
    let plugins = dir.join("plugins");
    for i in 0..installed {
        let p = plugins.join(format!("p{i:03}"));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("plugin.toml"),
            format!("[plugin]\nid = \"p{i:03}\"\nname = \"P{i}\"\nversion = \"0.1.0\"\napi = 1\nlibrary = \"hermes_loopback\"\n"),
        )
        .unwrap();
    }
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = [{:?}]\nstate_dir = \"state\"\n",
        target().join("release").display().to_string()
    );
    for i in 0..configured {
        config.push_str(&format!("[platforms.p{i:03}]\n"));
    }
    let path = dir.join("hermes.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn gateway(config: &Path) -> (Server, Instant) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hermes-host"));
    command
        .arg("--config")
        .arg(config)
        .args(["--log-level", "error", "serve"]);
    spawn(command)
}

/// Time from spawning `serve` until `GET /health` answers 200.
fn time_to_health(config: &Path) -> Duration {
    let (server, started) = gateway(config);
    loop {
        if let Ok(mut s) = TcpStream::connect(&server.addr) {
            let _ = write!(
                s,
                "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                server.addr
            );
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return started.elapsed();
            }
        }
    }
}

fn bench_startup() {
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let one = tempfile::tempdir_in(&base).unwrap();
    let many = tempfile::tempdir_in(&base).unwrap();
    let eager = tempfile::tempdir_in(&base).unwrap();
    let configs = [
        setup(one.path(), 1, 1),
        setup(many.path(), 200, 1),
        setup(eager.path(), 200, 200),
    ];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for _ in 0..15 {
        for (i, config) in configs.iter().enumerate() {
            samples[i].push(time_to_health(config));
        }
    }
    let [a, b, c] = samples.map(median);
    println!(
        "### Start-up until `/health` answers (release build, medians of 15 interleaved runs)\n"
    );
    println!("| installed | configured (eager) | median | ratio |");
    println!("|---:|---:|---:|---:|");
    println!("| 1 | 1 | {} | 1.00 (baseline) |", ms1(a));
    println!(
        "| 200 | 1 | {} | {:.2} |",
        ms1(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "| 200 | 200 | {} | {:.2} |",
        ms1(c),
        c.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "\nEager-loading all 200 against lazy (200 installed, 1 loaded): {:.1}x.\n",
        c.as_secs_f64() / b.as_secs_f64()
    );
}

/// A config in `dir` serving the release loopback, with `extra` appended.
fn loopback_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n[plugins]\ndirs = [{:?}]\nlibrary_dirs = [{:?}]\nstate_dir = \"state\"\n[platforms.loopback]\n{extra}",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins").display().to_string(),
            target().join("release").display().to_string()
        ),
    )
    .unwrap();
    config
}

fn bench_throughput() {
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let config = loopback_config(dir.path(), "");
    let (gw, _) = gateway(&config);
    let mut bare_cmd = Command::new(std::env::current_exe().unwrap());
    bare_cmd.arg("bare-server");
    let (bare, _) = spawn(bare_cmd);
    let body = r#"{"chat_id":"bench","text":"hello"}"#;
    let secs = Duration::from_secs(2);
    // Warm both up, then measure them in turn at each concurrency.
    load(
        &gw.addr,
        "/api/platforms/loopback/send",
        body,
        4,
        Duration::from_millis(500),
    );
    load(&bare.addr, "/send", body, 4, Duration::from_millis(500));
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "### Sends: `POST /api/platforms/loopback/send` against a bare axum handler returning the same JSON (release, keep-alive clients, median of 3 interleaved {} s rounds per cell)\n",
        secs.as_secs()
    );
    println!(
        "| clients | bare req/s | bare p50 | bare p99 | gateway req/s | gateway p50 | gateway p99 | throughput ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for clients in [1, 4, 16, 64] {
        // Three interleaved rounds per cell; the median round of each server is reported.
        let (mut bare_runs, mut gw_runs, mut b, mut g) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let (rps, lat) = load(&bare.addr, "/send", body, clients, secs);
            bare_runs.push(rps);
            b.extend(lat);
            let (rps, lat) = load(
                &gw.addr,
                "/api/platforms/loopback/send",
                body,
                clients,
                secs,
            );
            gw_runs.push(rps);
            g.extend(lat);
        }
        bare_runs.sort_by(f64::total_cmp);
        gw_runs.sort_by(f64::total_cmp);
        let (bare_rps, gw_rps) = (bare_runs[1], gw_runs[1]);
        println!(
            "| {clients} | {bare_rps:.0} | {} | {} | {gw_rps:.0} | {} | {} | {:.2} |",
            us(percentile(&mut b, 0.5)),
            us(percentile(&mut b, 0.99)),
            us(percentile(&mut g, 0.5)),
            us(percentile(&mut g, 0.99)),
            gw_rps / bare_rps
        );
    }
    println!();
}

/// Journal durability: the same sends with `durability = "fsync"` against `"flush"`, two
/// gateways side by side in one run, their journals on the same disk (target/bench-tmp).
fn bench_durability() {
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let flush_dir = tempfile::tempdir_in(&base).unwrap();
    let fsync_dir = tempfile::tempdir_in(&base).unwrap();
    let (flush, _) = gateway(&loopback_config(
        flush_dir.path(),
        "[journal]\ndurability = \"flush\"\n",
    ));
    let (fsync, _) = gateway(&loopback_config(
        fsync_dir.path(),
        "[journal]\ndurability = \"fsync\"\n",
    ));
    let path = "/api/platforms/loopback/send";
    let body = r#"{"chat_id":"bench","text":"hello"}"#;
    let secs = Duration::from_secs(2);
    load(&flush.addr, path, body, 4, Duration::from_millis(500));
    load(&fsync.addr, path, body, 4, Duration::from_millis(500));
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "### Journal durability: sends with `fsync` against `flush` (release, keep-alive clients, median of 3 interleaved {} s rounds per cell; each send journals 2 records: the send and its echo)\n",
        secs.as_secs()
    );
    println!(
        "| clients | flush req/s | flush p50 | flush p99 | fsync req/s | fsync p50 | fsync p99 | fsync / flush |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for clients in [1, 16, 64] {
        let (mut a_runs, mut b_runs, mut a, mut b) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let (rps, lat) = load(&flush.addr, path, body, clients, secs);
            a_runs.push(rps);
            a.extend(lat);
            let (rps, lat) = load(&fsync.addr, path, body, clients, secs);
            b_runs.push(rps);
            b.extend(lat);
        }
        a_runs.sort_by(f64::total_cmp);
        b_runs.sort_by(f64::total_cmp);
        println!(
            "| {clients} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2} |",
            a_runs[1],
            us(percentile(&mut a, 0.5)),
            us(percentile(&mut a, 0.99)),
            b_runs[1],
            us(percentile(&mut b, 0.5)),
            us(percentile(&mut b, 0.99)),
            b_runs[1] / a_runs[1]
        );
    }
    println!();
}

/// The baseline: an axum server whose handler answers what a loopback send answers.
fn bare_server() {
    use axum::{Json, Router, routing::post};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = Router::new().route(
            "/send",
            post(|_body: axum::body::Bytes| async {
                Json(serde_json::json!({ "message_id": "lb-1-1", "platform": "loopback", "generation": 1 }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("bare ready: http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// Start-up with the real adapters installed: only loopback configured, against all of them
/// configured eagerly (no peers needed: IRC and MQTT connect in the background).
fn bench_adapters() {
    let release = target().join("release");
    let plugins_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let adapters = [
        ("loopback", "hermes_loopback"),
        ("irc", "hermes_irc"),
        ("mqtt", "hermes_mqtt"),
        ("webhook", "hermes_webhook"),
        ("xmpp", "hermes_xmpp"),
        ("matrix", "hermes_matrix"),
    ];
    println!("### Adapters: library sizes (release, `strip = \"debuginfo\"`)\n");
    println!("| plugin | library | size |");
    println!("|---|---|---:|");
    for (id, lib) in adapters {
        let path = release.join(format!("lib{lib}.so"));
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "| {id} | lib{lib}.so | {:.2} MiB |",
            size as f64 / 1048576.0
        );
    }
    let base = target().join("bench-tmp");
    let write = |dir: &Path, eager_all: bool| -> PathBuf {
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n[plugins]\ndirs = [{:?}]\nlibrary_dirs = [{:?}]\nstate_dir = \"state\"\n[platforms.loopback]\n",
            plugins_src.display().to_string(),
            release.display().to_string()
        );
        if eager_all {
            config.push_str("[platforms.irc]\nserver = \"127.0.0.1:9\"\nnick = \"hermes\"\n[platforms.mqtt]\nbroker = \"127.0.0.1:9\"\n[platforms.webhook]\n[platforms.xmpp]\njid = \"hermes@localhost\"\npassword = \"x\"\nserver = \"127.0.0.1:9\"\n[platforms.matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser = \"hermes\"\npassword = \"x\"\n");
        }
        let path = dir.join("hermes.toml");
        std::fs::write(&path, config).unwrap();
        path
    };
    let lazy_dir = tempfile::tempdir_in(&base).unwrap();
    let eager_dir = tempfile::tempdir_in(&base).unwrap();
    let configs = [write(lazy_dir.path(), false), write(eager_dir.path(), true)];
    let mut samples: [Vec<Duration>; 2] = Default::default();
    for _ in 0..15 {
        for (i, config) in configs.iter().enumerate() {
            samples[i].push(time_to_health(config));
        }
    }
    let [lazy, eager] = samples.map(median);
    println!(
        "\n### Adapters: start-up until `/health` answers, all installed (medians of 15 interleaved runs)\n"
    );
    println!("| configured | median | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| loopback only (irc, mqtt, webhook, xmpp, matrix stay unloaded) | {} | 1.00 |",
        ms1(lazy)
    );
    println!(
        "| all six, eager | {} | {:.2} |\n",
        ms1(eager),
        eager.as_secs_f64() / lazy.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("bare-server") {
        return bare_server();
    }
    let run = |name: &str| args.is_empty() || args.iter().any(|a| name.contains(a.as_str()));
    println!("## serve (`make bench`)\n");
    if run("startup") {
        bench_startup();
    }
    if run("throughput") {
        bench_throughput();
    }
    if run("durability") {
        bench_durability();
    }
    if run("adapters") {
        bench_adapters();
    }
}
