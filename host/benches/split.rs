//! A 100 KB text to IRC against a real ngircd: the gateway's split under the adapter's
//! `max_text_len`, every part handed to the IRC plugin in order, and the rate at which the
//! parts reach a client in the channel against the rate the adapter declares (`burst` lines,
//! then one per `send_interval_ms`). Needs ngircd (`make test-deps` installs it). ngircd's own
//! flood penalty is off here (`MaxPenaltyTime = 0`): with it the server, not the adapter, sets
//! the pace (measured: 2.5 lines/s whatever the client sends).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::target;
use hermes_host::{
    capabilities::split_text,
    loader::{DiscardInbound, Library, StartOptions},
    message::Outbound,
};

const INTERVAL_MS: u64 = 20;
const BURST: u64 = 4;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn line(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream) -> String {
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "ngircd closed");
        if let Some(token) = line.trim_end().strip_prefix("PING ") {
            write!(writer, "PONG {token}\r\n").unwrap();
            continue;
        }
        return line.trim_end().to_owned();
    }
}

fn main() {
    let Ok(ngircd) = which("/usr/sbin/ngircd") else {
        println!("ngircd is not installed: skipped (make test-deps installs it)");
        return;
    };
    let dir = tempfile::tempdir_in(target()).unwrap();
    let port = free_port();
    let conf = dir.path().join("ngircd.conf");
    std::fs::write(
        &conf,
        format!("[Global]\nName = irc.hermes.bench\nInfo = bench\nListen = 127.0.0.1\nPorts = {port}\n[Limits]\nMaxConnectionsIP = 0\nMaxPenaltyTime = 0\n[Options]\nDNS = no\nIdent = no\nPAM = no\n"),
    )
    .unwrap();
    let mut server = Command::new(ngircd)
        .args(["-n", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("ngircd: {e}"),
        }
    };
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    write!(
        writer,
        "NICK watcher\r\nUSER watcher 0 * :bench\r\nJOIN #ops\r\n"
    )
    .unwrap();
    while !line(&mut reader, &mut writer).contains(" 366 ") {}

    let shadow = tempfile::tempdir_in(target()).unwrap();
    let irc = Library::open(&target().join("release/libhermes_irc.so"), shadow.path())
        .unwrap()
        .start(StartOptions::new(
            "irc",
            1,
            serde_json::json!({
                "server": addr, "nick": "hermes", "channels": ["#ops"],
                "send_interval_ms": INTERVAL_MS, "burst": BURST,
            })
            .to_string(),
            Arc::new(DiscardInbound),
        ))
        .unwrap();
    while !line(&mut reader, &mut writer).contains("JOIN") {}

    let text = "lorem ipsum dolor sit amet ".repeat(100 * 1024 / 27);
    let started = Instant::now();
    let parts = split_text(&text, 400);
    let split = started.elapsed();
    for part in &parts {
        irc.send(&Outbound::new("#ops", part.clone())).unwrap();
    }
    let handed = started.elapsed();
    let mut got = 0;
    while got < parts.len() {
        if line(&mut reader, &mut writer).contains("PRIVMSG #ops :") {
            got += 1;
        }
    }
    let all = started.elapsed();
    let rate = parts.len() as f64 / all.as_secs_f64();
    let declared = 1000.0 / INTERVAL_MS as f64;
    println!(
        "### A {} KB text to IRC (ngircd), `max_text_len = 400`, `burst = {BURST}`, `send_interval_ms = {INTERVAL_MS}`\n",
        text.len() / 1024
    );
    println!(
        "| split into | split took | handed to the plugin after | last part in the channel after | parts/s seen | declared |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} parts | {:.1} µs | {:.1} ms | {:.2} s | {rate:.1} | {declared:.0}/s after a burst of {BURST} |\n",
        parts.len(),
        split.as_secs_f64() * 1e6,
        handed.as_secs_f64() * 1e3,
        all.as_secs_f64()
    );
    let _ = irc
        .stop(false, Duration::from_secs(5))
        .map(|s| s.library.unload());
    let _ = server.kill();
    let _ = server.wait();
}

fn which(path: &str) -> Result<&str, ()> {
    if std::path::Path::new(path).is_file() {
        Ok(path)
    } else {
        Err(())
    }
}
